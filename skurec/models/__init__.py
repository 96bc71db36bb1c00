"""skurec's framework-free classifier core (no dagster): everything works on cached, L2-normalised embeddings.

One hierarchy family, :func:`train_hierarchy` (:mod:`.hierarchy_recipes`): a superclass builder, a router and a
fine head, each a registered, swappable part, assembled into a :class:`HierarchicalClassifier` and selected on
validation. Recipes: ``"production"`` (confusion superclasses -> :class:`LDARouter` -> :class:`SpecialistHead`, also
:func:`train_specialist_hierarchy`) and ``"case_study"`` (class prototypes -> UMAP -> agglomerative superclasses ->
dense :class:`CoarseHead` -> few-shot :class:`FineHead`). They are compared against the flat models
:func:`fit_flat_softmax` (THE flat model: the strong softmax, also a candidate global scorer of the hierarchy) and the
reference baselines :class:`FlatPrototype` / :class:`FlatKNN`. Every model serialises to
``dict[str, bytes]`` of safetensors + JSON (``to_files``) and back (``from_files``, or :func:`load_classifier` for
any kind).

Import graph (one way, checked by ``tests/models/test_models_import_graph.py``): ``_common``, ``serialization`` ->
``dense``, ``prototypes``, ``metrics``, ``similar``, ``superclasses``, ``lda`` -> ``coarse``, ``fine``, ``flat``,
``lda_router`` -> ``specialist_search``, ``local_whitening``, ``specialists``, ``confusion_superclasses`` ->
``softmax`` -> ``global_scorer`` -> ``hierarchical`` -> ``specialist_hierarchy`` -> ``hierarchy_recipes`` ->
``registry`` (:func:`load_classifier`) -> this package.

The recommended hierarchy is the production recipe: a global shrinkage-LDA scorer whose implied
superclass posterior routes (:class:`LDARouter`), superclasses of look-alikes from its confusions
(:func:`confusion_superclasses`) and per-superclass local-whitening specialists combined with the global scores
(:class:`SpecialistHead`); see those modules.
"""

from ._common import (
    Classifier,
    EmbeddingInputError,
    Predictions,
    ProgressFn,
    check_embeddings,
    check_xy,
    l2_normalize,
    resolve_device,
)
from .coarse import CoarseHead, train_coarse
from .confusion_superclasses import confusion_superclasses
from .dense import DenseConfig
from .fine import FineConfig, FineHead, train_fine
from .flat import FlatKNN, FlatPrototype
from .global_scorer import GlobalScorer, choose_global_scorer
from .hierarchical import AddClassesResult, HierarchicalClassifier
from .hierarchy_recipes import (
    FINE_HEADS,
    RECIPES,
    ROUTERS,
    SUPERCLASS_BUILDERS,
    CaseStudyConfig,
    IncompatibleParts,
    case_study_n_superclasses,
    register_fine_head,
    register_router,
    register_superclass_builder,
    train_hierarchy,
    train_specialist_hierarchy,
)
from .lda import (
    LDAStatistics,
    fit_lda_statistics,
    lda_statistics,
    rows_sha256,
    statistics_files,
    statistics_from_files,
)
from .lda_router import LDARouter, train_lda_router
from .metrics import (
    confusion_matrix,
    mean_per_class_accuracy,
    per_class_accuracy,
    superclass_accuracy,
    topk_accuracy,
)
from .prototypes import Prototypes, class_prototypes
from .registry import load_classifier
from .serialization import ModelFormatError
from .similar import group_members, nearest_neighbour_cosines, similar_class_set, similar_groups
from .softmax import FlatSoftmax, SoftmaxConfig, fit_flat_softmax
from .specialist_hierarchy import (
    SpecialistHierarchy,
    SpecialistHierarchyConfig,
    TrainedHierarchy,
    choose_route_m,
    global_scorer_hierarchy,
)
from .specialists import SpecialistConfig, SpecialistHead, train_specialists
from .superclasses import (
    Superclasses,
    derive_superclasses,
    superclass_group_ami,
    superclass_names,
    superclass_scatter_png,
)

__all__ = [
    "CaseStudyConfig",
    "FINE_HEADS",
    "IncompatibleParts",
    "RECIPES",
    "ROUTERS",
    "SUPERCLASS_BUILDERS",
    "TrainedHierarchy",
    "case_study_n_superclasses",
    "register_fine_head",
    "register_router",
    "register_superclass_builder",
    "superclass_names",
    "train_hierarchy",
    "AddClassesResult",
    "Classifier",
    "CoarseHead",
    "DenseConfig",
    "EmbeddingInputError",
    "FineConfig",
    "FineHead",
    "FlatKNN",
    "FlatPrototype",
    "FlatSoftmax",
    "GlobalScorer",
    "SoftmaxConfig",
    "HierarchicalClassifier",
    "LDARouter",
    "LDAStatistics",
    "SpecialistConfig",
    "SpecialistHead",
    "SpecialistHierarchy",
    "SpecialistHierarchyConfig",
    "ModelFormatError",
    "Predictions",
    "ProgressFn",
    "Prototypes",
    "Superclasses",
    "check_embeddings",
    "check_xy",
    "class_prototypes",
    "choose_global_scorer",
    "choose_route_m",
    "confusion_superclasses",
    "confusion_matrix",
    "derive_superclasses",
    "fit_lda_statistics",
    "global_scorer_hierarchy",
    "group_members",
    "l2_normalize",
    "lda_statistics",
    "load_classifier",
    "mean_per_class_accuracy",
    "nearest_neighbour_cosines",
    "per_class_accuracy",
    "resolve_device",
    "rows_sha256",
    "similar_class_set",
    "similar_groups",
    "statistics_files",
    "statistics_from_files",
    "superclass_accuracy",
    "superclass_group_ami",
    "superclass_scatter_png",
    "topk_accuracy",
    "train_coarse",
    "train_fine",
    "fit_flat_softmax",
    "train_lda_router",
    "train_specialist_hierarchy",
    "train_specialists",
]
