"""Differentiable architecture search: the DARTS space, DARTS and RARTS (docs/search.md).

* Search space (:mod:`sparsejax.search.space`): mixed ops weighted by
  ``softmax(alpha)``, search cells and :class:`SearchNetwork`; ``alpha`` is a
  separate pytree ``{"normal": (14, 8), "reduce": (14, 8)}``.
* Genotypes (:mod:`sparsejax.search.genotypes`): DARTS's derivation rule and
  JSON files; the evaluation network is ``sparsejax.models.DartsEvalNet``
  (``get_model("darts_eval", genotype=...)``).
* Algorithms (:mod:`sparsejax.search.algorithms`): pure step functions for
  DARTS (first order; second order with finite-difference or exact
  hypergradient) and RARTS (Gauss-Seidel as in ALGORITHMS.md, or with the
  architecture gradient reused from the weight passes).
* A solvable quadratic bilevel model (:mod:`sparsejax.search.toy`).
* The search loop behind ``scripts/search.py`` (:mod:`sparsejax.search.run`).
"""

from __future__ import annotations

from sparsejax.models.darts import (DARTS_V2, PRIMITIVES, DartsEvalNet, Genotype,
                                    genotype_to_json, parse_genotype, reduction_cells)
from sparsejax.search.algorithms import (ALPHA_UPDATES, HESSIAN_MODES, GradsFn, LossFn,
                                         SearchState, darts_hypergradient, darts_step,
                                         init_darts, init_rarts, loss_and_grads, rarts_step)
from sparsejax.search.genotypes import (derive_cell, derive_genotype, genotype_str,
                                        load_genotype, save_genotype)
from sparsejax.search.run import (COMPILE_MODES, METHODS, Search, edge_names, load_halves,
                                  method_label, run_search, validate_config)
from sparsejax.search.space import (CELL_TYPES, MixedOp, SearchCell, SearchNetwork, check_alphas,
                                    check_primitives, init_alphas, num_edges)
from sparsejax.search.toy import QuadraticBilevel, random_problem, realizable_problem

__all__ = [
    "PRIMITIVES",
    "CELL_TYPES",
    "Genotype",
    "DARTS_V2",
    "DartsEvalNet",
    "parse_genotype",
    "genotype_to_json",
    "reduction_cells",
    "num_edges",
    "check_primitives",
    "init_alphas",
    "check_alphas",
    "MixedOp",
    "SearchCell",
    "SearchNetwork",
    "derive_cell",
    "derive_genotype",
    "genotype_str",
    "save_genotype",
    "load_genotype",
    "LossFn",
    "GradsFn",
    "loss_and_grads",
    "SearchState",
    "HESSIAN_MODES",
    "ALPHA_UPDATES",
    "init_darts",
    "init_rarts",
    "darts_hypergradient",
    "darts_step",
    "rarts_step",
    "QuadraticBilevel",
    "random_problem",
    "realizable_problem",
    "METHODS",
    "COMPILE_MODES",
    "validate_config",
    "method_label",
    "load_halves",
    "Search",
    "run_search",
    "edge_names",
]
