"""Neighbours: cosine k-nearest neighbours in a layer's activation space.

One index per layer, built once from the layer's activations read in row blocks (NaN rows are
absent and never returned): exact with one cell for small runs, inverted lists over spherical
k-means cells with exact cosines inside for large ones (chosen by measuring: see
benchmarks/neighbours_bench.py). ``search`` answers a row, a cell's mean or a selection's mean;
``knn_graph`` gives every row's neighbours (what comparing two runs needs). Pure compute: numpy
and torch, no store, no orchestration.
"""

from atlas_core.neighbours.exact import exact_knn
from atlas_core.neighbours.index import FORMAT, FORMAT_VERSION, NeighbourIndex
from atlas_core.neighbours.params import NeighbourParams

__all__ = ["FORMAT", "FORMAT_VERSION", "NeighbourIndex", "NeighbourParams", "exact_knn"]
