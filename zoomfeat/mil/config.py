"""The MIL benchmark's settings: ``conf/bench.yaml`` (with its ``task/`` and ``mil/`` groups) *is* this module.

Every YAML key is a field here, nested as in the YAML (``task.label_col`` is
``BenchmarkConfig.task.label_col``, ``mil.lr`` is ``BenchmarkConfig.mil.lr``); the field comments
are the YAML comments. :func:`load_bench_config` validates a composed config with
:func:`zoomfeat.runtime.config.load_config`: an unknown key (``task.labal_col``, ``mil.lrr``) is a
:class:`~zoomfeat.runtime.errors.ConfigError` listing the known keys, values are converted to the
field types, and the ``__post_init__`` checks below refuse values out of range. A new option is
added in one place: a field here, with its default and comment repeated in the YAML.

Task configs (``conf/task/*.yaml``) are ``@package _global_``: besides ``task.*`` they may set
``feature_sets``, ``baseline`` and ``mil.*`` defaults for the task; Hydra merges them before
validation, so they are checked like everything else. From Python, build the dataclasses directly::

    BenchmarkConfig(task=TaskSection(name="brca", labels="labels.csv", bags="features/",
                                     label_map={"IDC": 0, "ILC": 1}),
                    cv=CVSection(folds=5), mil=MILConfig(hidden=[256]), out_dir="results/brca")

See ``docs/ARCHITECTURE.md`` (MIL benchmark, Configs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zoomfeat.runtime.config import check, load_config
from zoomfeat.runtime.errors import ConfigError

MISSING_BAGS = ("error", "drop")
IN_MEMORY = (True, False, "auto")
DTYPES = ("float16", "float32")
ATT_ACTS = ("tanh", "relu", "gelu")
TASK_TYPES = ("classification", "regression", "survival")
REG_LOSSES = ("mse", "huber")
MIL_ARCHS = ("abmil", "clam_sb", "transmil", "dsmil", "meanpool", "maxpool")


#: task types (``task.type``) each aggregator supports; multiclass is "classification" with k > 2
SUPPORT = {
    "abmil": ("binary", "multiclass", "regression", "survival"),
    "clam_sb": ("binary",),
    "transmil": ("binary", "multiclass", "regression", "survival"),
    "dsmil": ("binary", "regression", "survival"),
    "meanpool": ("binary", "multiclass", "regression", "survival"),
    "maxpool": ("binary", "multiclass", "regression", "survival"),
}
_WHY = {
    "clam_sb": "its instance clustering loss needs a binary bag label (positive / negative instances)",
    "dsmil": "torchmil's DSMIL has a single-output head (its max-instance branch has one score per instance)",
}


def task_kind(task_type: str, n_classes: int) -> str:
    """``binary``, ``multiclass``, ``regression`` or ``survival``."""
    if task_type == "classification":
        return "binary" if n_classes <= 2 else "multiclass"
    return task_type


def check_support(cfg: MILConfig, task_type: str, n_classes: int = 2) -> None:
    """Refuse an aggregator that does not fit the task, in one line naming the key.

    Raises:
        ConfigError: e.g. ``mil=clam_sb`` with ``task.type=regression``.
    """
    kind = task_kind(task_type, n_classes)
    if kind not in SUPPORT[cfg.arch]:
        raise ConfigError(
            f"mil={cfg.name} (mil.arch={cfg.arch}) does not support {kind} tasks: {_WHY.get(cfg.arch, '')}; "
            f"use one of {', '.join(a for a, s in SUPPORT.items() if kind in s)} for task.type={task_type}"
        )


@dataclass
class CSVSection:
    """How an instance CSV is read (``task.csv``; MUSK-style: one row per instance)."""

    label_col: Any = 0  # bag label column: position (int) or name (str, with a header)
    bag_col: Any = 1  # bag id column: position or name
    header: Any = "auto"  # true | false | auto (a first row that is not numeric is a header)

    def __post_init__(self) -> None:
        check(
            self.header in (True, False, "auto"),
            f"task.csv.header must be true, false or auto, got {self.header!r}",
        )


@dataclass
class TaskSection:
    """One benchmark task (``conf/task/NAME.yaml``): its labels and where its bags are."""

    name: str  # task name (reports, default out_dir)
    # labels CSV (slide_id, case_id, label); null: the labels come from the instance CSV in task.bags
    labels: str | None = None
    # zoomfeat.extract output dir, a dir holding features_{set}/, a path with {set}, or an instance CSV
    bags: str | None = None
    #: labels CSV column of the slide ids (the bag file names without .h5)
    slide_col: str = "slide_id"
    # patient id: folds never split a patient (null: each slide is its own patient)
    case_col: str | None = "case_id"
    #: labels CSV column of the label (the numeric target for regression)
    label_col: str = "label"
    label_map: dict[Any, int] | None = None  # label value -> class index 0..k-1 (keys compared as strings)
    threshold: float | None = None  # numeric label column: value >= threshold -> 1 (wins over label_map)
    # without label_map: number the distinct label values in sorted order (strings or any integers)
    auto_classes: bool = False
    missing_bags: str = "error"  # error | drop (labelled slides with no bag)
    csv: CSVSection = field(default_factory=CSVSection)
    #: classification | regression (task.label_col is a numeric target) | survival (time_col, event_col)
    type: str = "classification"
    time_col: str | None = None  # survival: follow-up time column (> 0, any unit)
    event_col: str | None = None  # survival: 1 = event observed, 0 = censored
    loss: str = "mse"  # regression loss on the standardised target: mse | huber
    risk_groups: int = 2  # survival: Kaplan-Meier curves of this many predicted-risk groups (quantiles)

    def __post_init__(self) -> None:
        check(
            self.missing_bags in MISSING_BAGS,
            f"task.missing_bags must be one of {', '.join(MISSING_BAGS)}, got {self.missing_bags!r}",
        )
        check(
            self.type in TASK_TYPES,
            f"task.type must be one of {', '.join(TASK_TYPES)}, got {self.type!r}",
        )
        check(self.loss in REG_LOSSES, f"task.loss must be one of {', '.join(REG_LOSSES)}, got {self.loss!r}")
        if self.type == "survival":
            check(
                bool(self.time_col) and bool(self.event_col),
                "task.type=survival needs task.time_col and task.event_col (the labels CSV's follow-up "
                "time and event columns)",
            )
        check(self.risk_groups >= 2, f"task.risk_groups must be >= 2, got {self.risk_groups}")


@dataclass
class MILConfig:
    """One MIL aggregator and its training (``conf/mil/*.yaml``; :mod:`zoomfeat.mil.aggregators`)."""

    #: the aggregator's name (conf/mil/{name}.yaml; reports and the default out_dir)
    name: str = "abmil"
    arch: str = "abmil"  # abmil | clam_sb | transmil | dsmil | meanpool | maxpool
    gated: bool = False  # gated attention (mil=gated_abmil, clam_sb)
    att_dim: int = 128  # attention width (transmil: the transformer width)
    #: attention activation: tanh | relu | gelu
    att_act: str = "tanh"
    k_sample: int = 8  # clam_sb: most/least attended instances in the clustering loss
    inst_loss: str = "SmoothTop1SVM"  # clam_sb: SmoothTop1SVM | CrossEntropy
    inst_weight: float = 0.3  # clam_sb: weight of the instance loss (bag loss 1 - inst_weight)
    heads: int = 8  # transmil: attention heads
    layers: int = 2  # transmil: Nystrom transformer layers (>= 2)
    att_dropout: float = 0.0  # transmil: attention dropout; dsmil: dropout before the value layer
    nonlinear_q: bool = True  # dsmil: two-layer query network
    nonlinear_v: bool = False  # dsmil: a Linear-ReLU value network
    head_hidden: int = 0  # meanpool/maxpool: hidden width of the head MLP (0: one linear layer)
    survival_batch_size: int = 32  # survival: bags per step (the Cox loss ranks the bags of a step)
    # Linear-ReLU-Dropout layers before the attention pooling
    hidden: list[int] = field(default_factory=lambda: [512])
    #: dropout after each hidden layer
    dropout: float = 0.25
    standardize: bool = True  # standardise instance features with the training fold's statistics
    lr: float = 2e-4  # AdamW
    #: AdamW weight decay
    weight_decay: float = 1e-4
    #: most training epochs per fold (early stopping may end sooner)
    epochs: int = 50
    patience: int = 10  # early stopping on validation AUC (ties: lower validation loss)
    min_epochs: int = 10  # never stop before this many epochs
    warmup: int = 5  # epochs before a best checkpoint is tracked (early val AUC is noise)
    batch_size: int = 1  # bags per optimiser step (>1 pads and masks)
    class_balanced: bool = True  # each class contributes half of the loss
    max_instances: int | None = None  # random subset of instances per training bag and epoch (null: all)
    amp: bool = True  # bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX)

    def __post_init__(self) -> None:
        check(
            self.att_act in ATT_ACTS,
            f"mil.att_act must be one of {', '.join(ATT_ACTS)}, got {self.att_act!r}",
        )
        check(self.arch in MIL_ARCHS, f"mil.arch must be one of {', '.join(MIL_ARCHS)}, got {self.arch!r}")
        check(self.layers >= 2, f"mil.layers must be >= 2 (TransMIL), got {self.layers}")
        check(
            self.att_dim % max(self.heads, 1) == 0 or self.arch != "transmil",
            f"mil.att_dim ({self.att_dim}) must be divisible by mil.heads ({self.heads}) for transmil",
        )
        check(
            self.inst_loss in ("SmoothTop1SVM", "CrossEntropy"),
            f"mil.inst_loss must be SmoothTop1SVM or CrossEntropy, got {self.inst_loss!r}",
        )
        check(0 <= self.inst_weight < 1, f"mil.inst_weight must be in [0, 1), got {self.inst_weight}")
        check(
            self.survival_batch_size >= 2,
            f"mil.survival_batch_size must be >= 2, got {self.survival_batch_size}",
        )
        check(self.epochs >= 1, f"mil.epochs must be >= 1, got {self.epochs}")
        check(self.batch_size >= 1, f"mil.batch_size must be >= 1, got {self.batch_size}")
        check(self.lr > 0, f"mil.lr must be > 0, got {self.lr}")
        check(0 <= self.dropout < 1, f"mil.dropout must be in [0, 1), got {self.dropout}")
        check(
            self.max_instances is None or self.max_instances >= 1,
            f"mil.max_instances must be >= 1 or null, got {self.max_instances}",
        )


@dataclass
class CVSection:
    """Cross-validation (``cv``)."""

    #: outer cross-validation folds (patient-level, stratified by label)
    folds: int = 5
    #: repeats of the k-fold split, each with another shuffle
    repeats: int = 1
    val_fraction: float = 0.2  # patient-grouped validation part of each training fold (0: no early stopping)
    splits: str | None = None  # a splits.csv from an earlier run: reuse its folds exactly

    def __post_init__(self) -> None:
        check(self.folds >= 2, f"cv.folds must be >= 2, got {self.folds}")
        check(self.repeats >= 1, f"cv.repeats must be >= 1, got {self.repeats}")
        check(0 <= self.val_fraction < 1, f"cv.val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class DataSection:
    """How bags are held (``data``)."""

    in_memory: Any = "auto"  # auto: hold bags in RAM when they fit in memory_fraction of free RAM
    dtype: str = "float16"  # in-memory dtype (float16 halves memory; float32 for huge values)
    #: share of the free RAM the in-memory bags may take (in_memory=auto)
    memory_fraction: float = 0.5

    def __post_init__(self) -> None:
        check(
            self.in_memory in IN_MEMORY, f"data.in_memory must be true, false or auto, got {self.in_memory!r}"
        )
        check(self.dtype in DTYPES, f"data.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        check(
            0 < self.memory_fraction <= 1,
            f"data.memory_fraction must be in (0, 1], got {self.memory_fraction}",
        )


@dataclass
class SelectionSection:
    """Nested recipe selection (``selection``; :mod:`zoomfeat.mil.selection`): per outer fold, the
    candidate with the best inner-validation score is the one evaluated on that test fold."""

    # candidate feature sets: names or globs (zoomldm*_fused), each benchmarked too (empty: no selection)
    candidates: list[str] = field(default_factory=list)
    metric: str = "auc"  # validation score that decides: auc | balanced_accuracy | f1 | accuracy
    name: str = "selected"  # the report's row holding each fold's chosen candidate

    def __post_init__(self) -> None:
        from zoomfeat.mil.metrics import METRICS

        check(
            self.metric in METRICS,
            f"selection.metric must be one of {', '.join(METRICS)}, got {self.metric!r}",
        )
        check(bool(str(self.name).strip()), "selection.name is empty: name the selected row (e.g. selected)")


def _default_feature_sets() -> list[str]:
    return ["uni_20x", "uni_fused", "zoomldm_20x", "zoomldm_5x", "zoomldm_fused"]


@dataclass
class BenchmarkConfig:
    """Everything one benchmark run needs: ``conf/bench.yaml`` as a dataclass."""

    task: TaskSection
    mil: MILConfig = field(default_factory=MILConfig)
    cv: CVSection = field(default_factory=CVSection)
    data: DataSection = field(default_factory=DataSection)
    # feature sets to compare: names or glob patterns (uni_*) of features_{set}/ directories, any name
    # (TRIDENT job directories of other encoders too); the task may override
    feature_sets: list[str] = field(default_factory=_default_feature_sets)
    # paired tests compare every set with this one over the same folds (null: none)
    baseline: str | None = "uni_20x"
    # a published table's sets and layout (paper: the ZoomLDM paper's MIL table, zoomfeat/mil/presets.py);
    # it chooses feature_sets and baseline (leave both at their defaults); null: none
    preset: str | None = None
    #: where the report, folds, predictions and attention files go
    out_dir: str = "bench_results/${task.name}/${mil.name}"
    #: seed of the splits and of training
    seed: int = 0
    #: train every fold once per seed (null: [seed]); the report gives the spread across seeds
    seeds: list[int] | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    threads: int | None = None  # torch CPU threads (null: torch's default)
    progress: bool = True  # tqdm progress bars
    save_attention: bool = True  # attention/{set}/repeat{r}_fold{f}.h5 for heatmaps
    save_models: bool = True  # models/{aggregator}/{set}/seed{s}_repeat{r}_fold{f}.safetensors (heatmaps)
    bootstrap: int = 1000  # patient-level bootstrap resamples of the pooled out-of-fold predictions (0: none)
    selection: SelectionSection = field(default_factory=SelectionSection)
    #: several aggregators in one run (mil=[abmil,transmil]; set by the entry point): empty = [mil]
    aggregators: list[MILConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        sets = list(self.feature_sets)
        check(bool(sets), "feature_sets is empty: name the feature sets to benchmark (feature_sets=[...])")
        check(len(set(sets)) == len(sets), f"feature_sets lists a set twice: {sets}")
        if self.preset is not None:  # a known preset, which alone chooses feature_sets and baseline
            from zoomfeat.mil.presets import check_preset

            check_preset(self.preset, sets != _default_feature_sets(), self.baseline)
        check(self.threads is None or self.threads >= 1, f"threads must be >= 1 or null, got {self.threads}")
        check(
            self.seeds is None or len(self.seeds) > 0, "seeds is empty: give seeds=[0,1,2] or leave it null"
        )
        check(
            self.seeds is None or len(set(self.seeds)) == len(self.seeds),
            f"seeds lists a seed twice: {self.seeds}",
        )
        check(self.bootstrap >= 0, f"bootstrap must be >= 0, got {self.bootstrap}")
        names = [m.name for m in self.aggregators]
        check(len(set(names)) == len(names), f"mil lists an aggregator twice: {names}")
        if self.task.type != "classification":  # binary vs k classes is known once the labels are read
            for m in self.mil_list:
                check_support(m, self.task.type)
        check(
            not self.selection.candidates or self.cv.val_fraction > 0 or bool(self.cv.splits),
            "selection.candidates needs an inner validation part to choose on: set cv.val_fraction > 0 (e.g. 0.2)",
        )
        check(
            self.selection.name not in sets, f"selection.name {self.selection.name!r} is also a feature set"
        )
        if "${" in str(self.out_dir):  # built in Python: resolve the YAML's default the way Hydra does
            from omegaconf import OmegaConf

            named = {"task": {"name": self.task.name}, "mil": {"name": self.mil.name}}
            self.out_dir = str(OmegaConf.create({**named, "out_dir": str(self.out_dir)}).out_dir)

    @property
    def run_seeds(self) -> list[int]:
        """The seeds every fold is trained with (``seeds``, else ``[seed]``)."""
        return [int(s) for s in self.seeds] if self.seeds else [int(self.seed)]

    @property
    def mil_list(self) -> list[MILConfig]:
        """The aggregators of this run (``aggregators``, else ``[mil]``)."""
        return list(self.aggregators) or [self.mil]

    @property
    def paired_baseline(self) -> str | None:
        """The baseline of the paired tests, when it is benchmarked alongside other sets."""
        sets = list(self.feature_sets)
        return self.baseline if self.baseline in sets and len(sets) > 1 else None


def load_bench_config(data: Any, where: str = "bench") -> BenchmarkConfig:
    """Validate a composed ``conf/bench.yaml`` (a mapping or OmegaConf config) into :class:`BenchmarkConfig`."""
    return load_config(BenchmarkConfig, data, where)
