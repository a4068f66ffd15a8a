"""Geometry of LoRA updates: Frobenius inner products, norms, cosines, subspace overlaps and
random baselines, all from the low-rank factors; CSV and heatmap (PNG, PDF, SVG) output."""

from lorasum.geometry.baseline import (expected_abs_cosine, expected_abs_cosine_dense, expected_cos2,
                                       expected_rms_cosine, monte_carlo_cosine)
from lorasum.geometry.export import (FIGURE_FORMATS, PAIR_CSV_COLUMNS, figure_format, layer_heatmap_png, layer_table, matrix_heatmap,
                                     matrix_heatmap_figure, matrix_heatmap_png, pair_rows, similarity_rows,
                                     write_figure, write_png, write_similarity_csv)
from lorasum.geometry.gram import cosine_from_gram, cosine_matrices, inner_matrix
from lorasum.geometry.inner import cosine, frobenius_inner, frobenius_norm, module_cosines, rms
from lorasum.geometry.layers import group_by_layer, layer_index, module_kind, natural_key
from lorasum.geometry.similarity import PairStats, Similarity, similarity
from lorasum.geometry.subspace import (SubspaceOverlap, module_overlaps, orthonormal_basis, principal_cosines,
                                       subspace_overlap)

__all__ = ["frobenius_inner", "frobenius_norm", "cosine", "module_cosines", "rms",
           "similarity", "Similarity", "PairStats",
           "inner_matrix", "cosine_from_gram", "cosine_matrices",
           "orthonormal_basis", "principal_cosines", "subspace_overlap", "SubspaceOverlap", "module_overlaps",
           "expected_cos2", "expected_abs_cosine", "expected_abs_cosine_dense", "expected_rms_cosine",
           "monte_carlo_cosine", "layer_index", "module_kind", "group_by_layer", "natural_key",
           "similarity_rows", "pair_rows", "PAIR_CSV_COLUMNS", "FIGURE_FORMATS", "write_similarity_csv", "layer_table", "figure_format",
           "matrix_heatmap_figure", "matrix_heatmap", "matrix_heatmap_png", "layer_heatmap_png", "write_figure",
           "write_png"]
