"""Helpers shared by the rules: dataset look-up, paths, params."""

import json

from llm4rec.model import backbone_store

VERSION = llm4rec.__version__
DATASET = config["dataset"]
DATASETS = config["datasets"]

LOCAL_DATASETS = [name for name, d in DATASETS.items() if d["source"] == "local"]
RAW_DATASETS = [name for name, d in DATASETS.items() if d["source"] != "local"]


def _alternatives(names):
    """A wildcard regex matching exactly these names (none: matches nothing)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


def dataset_spec(wildcards):
    return DATASETS[wildcards.dataset]


def download_params(wildcards):
    """URLs, expected checksums and retry settings of one dataset, for the download rule."""
    spec = DATASETS[wildcards.dataset]
    from llm4rec.data.download import source_urls

    if spec["source"] == "demo":
        # A path relative to the working directory (made a file:// URL by the script), so
        # that moving the checkout changes no params.
        urls = {k: f"resources/demo/{k}.json.gz" for k in ("reviews", "meta")}
    else:
        urls = source_urls(
            spec["source"],
            spec.get("category"),
            config["url_templates"],
            {k: spec[k] for k in ("reviews", "meta") if k in spec},
        )
    return {
        "urls": urls,
        "sha256": {k: spec.get(f"{k}_sha256") for k in ("reviews", "meta")},
        "size": {k: spec.get(f"{k}_size") for k in ("reviews", "meta")},
        **config["download"],
    }


def download_inputs(wildcards):
    """The committed demo files, so that a change to them reruns the download."""
    if DATASETS[wildcards.dataset]["source"] == "demo":
        return [f"resources/demo/{k}.json.gz" for k in ("reviews", "meta")]
    return []


def local_inputs(wildcards):
    spec = DATASETS[wildcards.dataset]
    return {"reviews": spec["reviews"], "catalog": spec["items"]}


VARIANTS = config["variants"]
RUN = "results/{dataset}/{variant}-s{seed}"


# `model.backbone` as the stages read it: tiny, or the folder the `backbone` rule materializes
# once (llm4rec.model.backbone_store) from a hub name, a local folder or a GGUF file.
BACKBONE_SPEC = config["model"]["backbone"]
BACKBONE_NAME = backbone_store.backbone_name(BACKBONE_SPEC)
BACKBONE = "tiny" if BACKBONE_SPEC == "tiny" else str(backbone_store.BACKBONES_DIR / BACKBONE_NAME)


def model_settings(variant):
    """The `model` block with the variant's overrides applied. A pre-trained backbone is named
    by its materialized folder (the stages read nothing else; its source and revision are the
    `backbone` rule's settings, and a changed folder reruns the stages as their input)."""
    settings = {**config["model"], **VARIANTS[variant]}
    if BACKBONE != "tiny":
        settings["backbone"] = BACKBONE
        settings.pop("backbone_revision", None)
    return settings


def backbone_input(wildcards):
    """The materialized backbone folder of the encode, training and evaluation stages."""
    return [] if BACKBONE == "tiny" else BACKBONE


def backbone_source(wildcards):
    """The local files the `backbone` rule reads (a GGUF file; a folder's files), so that a
    changed source reruns it; a hub name has none (its revision is a param)."""
    kind = backbone_store.backbone_kind(BACKBONE_SPEC)
    path = Path(backbone_store.expand(BACKBONE_SPEC))
    if kind == "gguf":
        return [str(path)]
    if kind == "folder":
        return sorted(str(f) for f in path.iterdir() if f.is_file())
    return []


# The setting blocks each training or evaluation stage reads (besides the seeds and `model`).
STAGE_BLOCKS = {
    "pretrain": ["pretrain"],
    "finetune": ["finetune", "evaluate"],
    "evaluate": ["evaluate"],
}


def run_settings(stage):
    """The settings `stage` reads, as one JSON string: its rerun trigger, so that a changed
    fine-tuning setting reruns fine-tuning and evaluation, not pre-training."""

    def settings(wildcards):
        return json.dumps(
            {
                "seed": int(wildcards.seed),
                "model": model_settings(wildcards.variant),
                **{block: config[block] for block in STAGE_BLOCKS[stage]},
            },
            sort_keys=True,
        )

    return settings


def tokenizer_input(wildcards):
    """Only a backbone trained from scratch has a tokenizer trained on the dataset."""
    return f"results/{wildcards.dataset}/tokenizer" if config["model"]["backbone"] == "tiny" else []


def launch():
    """The command of the training and evaluation rules: `accelerate launch -m MODULE STAGE`
    (workflow/scripts/launch.sh) with one process per GPU of the job, then the stage's options.

    launch.sh gets the job's `gpu` resource as the scheduler sees it (so a profile's or the
    command line's `--set-resources pretrain:gpu=4` changes both the request and the process
    count) and `launch.num_processes`, the process count of a job without GPUs.
    `launch.mixed_precision` (accelerate's) is passed, quoted, only when it is not "no", so
    that the default command is the one of runs made before the setting existed.

    launch.sh is found through $LLM4REC_SCRIPTS (set in the Snakefile) and the stage is a
    module of the installed library, so the command holds no absolute path and moving the
    checkout does not count as a code change.
    """
    import shlex

    mixed = config["launch"].get("mixed_precision", "no")
    mixed = "no" if mixed is False else str(mixed)  # YAML reads a bare `no` as false
    flag = "" if mixed == "no" else f"--mixed_precision {shlex.quote(mixed)} "
    return (
        f'bash "$LLM4REC_SCRIPTS/launch.sh" {flag}{{resources.gpu:q}} {{params.cpu_processes:q}}'
        " -m {params.module:q} {params.stage:q} --processed {params.processed:q} --graph {input.graph:q}"
        " --tokenizer {params.tokenizer:q} {params.paths:q} --settings {params.settings:q}"
        " --version {params.version:q} --threads {threads:q} > {log:q} 2>&1"
    )


def all_targets():
    d = f"results/{DATASET}"
    return [
        f"{d}/processed/stats.json",
        f"{d}/graph/stats.json",
        *run_targets(DATASET),
        *baseline_targets(DATASET),
        *report_targets(DATASET),
    ]


def run_targets(dataset):
    return [
        f"results/{dataset}/{variant}-s{seed}/metrics.json"
        for variant in config["run_variants"]
        for seed in config["seeds"]
    ]


# --- baselines and the report -----------------------------------------------------------

BASELINE_SETTINGS = config["baselines"]
DETERMINISTIC_BASELINES = ["popularity", "itemknn", "ease"]


def baseline_settings(wildcards):
    """The baseline's config block plus the evaluation settings (a rerun trigger)."""
    name = wildcards.get("name", "multivae")
    return json.dumps(
        {
            "settings": BASELINE_SETTINGS.get(name, {}),
            "top_k": config["evaluate"]["top_k"],
            "batch_size": config["evaluate"]["batch_size"],
        },
        sort_keys=True,
    )


def baseline_runs(dataset):
    """Run folders of the configured baselines: `baselines/{name}`, `baselines/multivae-s{seed}`."""
    runs = []
    for name in BASELINE_SETTINGS["run"]:
        if name == "multivae":
            runs += [f"results/{dataset}/baselines/multivae-s{seed}" for seed in config["seeds"]]
        else:
            runs.append(f"results/{dataset}/baselines/{name}")
    return runs


def baseline_targets(dataset):
    return [f"{run}/metrics.json" for run in baseline_runs(dataset)]


REPORT = config["report"]


def reference_variant():
    """The method every other is tested against: `full`, else the first variant run."""
    ref = REPORT["reference"]
    return ref if ref in config["run_variants"] else config["run_variants"][0]


def variant_runs(dataset):
    return [(v, s, f"results/{dataset}/{v}-s{s}") for v in config["run_variants"] for s in config["seeds"]]


def run_records(wildcards):
    """Method, kind, seed, run folder and benchmark files of every run the summary covers."""
    d = wildcards.dataset
    recs = [
        {
            "method": v,
            "kind": "variant",
            "seed": s,
            "run_dir": run,
            "benchmarks": [f"benchmarks/{d}/{v}-s{s}/{stage}.tsv" for stage in ("pretrain", "finetune", "evaluate")],
        }
        for v, s, run in variant_runs(d)
    ]
    for run in baseline_runs(d):
        name = run.rsplit("/", 1)[1]
        method, _, seed = name.partition("-s")
        recs.append(
            {
                "method": method,
                "kind": "baseline",
                "seed": int(seed) if seed else None,
                "run_dir": run,
                "benchmarks": [f"benchmarks/{d}/baselines/{name}.tsv"],
            }
        )
    return json.dumps(recs)


def summary_inputs(wildcards):
    runs = [run for _, _, run in variant_runs(wildcards.dataset)] + baseline_runs(wildcards.dataset)
    return [f"{run}/{f}" for run in runs for f in ("metrics.json", "per_user.parquet")]


def curve_inputs(wildcards):
    """Per-epoch histories of one method over seeds (inside the training stage folders)."""
    d, m = wildcards.dataset, wildcards.method
    if m == "multivae":
        return [f"results/{d}/baselines/multivae-s{s}/history.csv" for s in config["seeds"]]
    return [f"results/{d}/{m}-s{s}/{stage}" for s in config["seeds"] for stage in ("pretrain", "finetune")]


def curve_methods():
    methods = list(config["run_variants"])
    return methods + (["multivae"] if "multivae" in BASELINE_SETTINGS["run"] else [])


def provenance_inputs(wildcards):
    """The raw inputs whose checksums the provenance lists, and the backbone's record."""
    files = raw_files(wildcards)
    if BACKBONE != "tiny":
        files["backbone"] = str(backbone_store.provenance_path(BACKBONE))
    return files


def raw_files(wildcards):
    """The raw inputs whose checksums the provenance lists."""
    spec = DATASETS[wildcards.dataset]
    if spec["source"] == "local":
        return {"reviews": spec["reviews"], "catalog": spec["items"]}
    return {k: f"resources/raw/{wildcards.dataset}/{k}.json.gz" for k in ("reviews", "meta")}


def git_commit():
    from llm4rec.report.provenance import git_commit as _commit

    return _commit(workflow.basedir)


def report_targets(dataset):
    r = f"results/{dataset}/report"
    return [
        f"results/{dataset}/summary.csv",
        f"{r}/dataset.html",
        f"{r}/methods.svg",
        f"{r}/relation_bias.svg",
        f"{r}/provenance.html",
        *(f"{r}/curves/{m}.svg" for m in curve_methods()),
    ]
