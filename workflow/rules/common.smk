"""Helpers shared by the rules: dataset look-up, paths, params."""

VERSION = llm4rec.__version__
DATASET = config["dataset"]
DATASETS = config["datasets"]

if DATASET not in DATASETS:
    raise ValueError(
        f"config 'dataset: {DATASET}' names no entry of 'datasets' (known: {', '.join(sorted(DATASETS))})"
    )

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
    from llm4rec.download import source_urls

    if spec["source"] == "demo":
        demo_dir = Path(workflow.basedir) / "resources" / "demo"
        urls = {k: (demo_dir / f"{k}.json.gz").as_uri() for k in ("reviews", "meta")}
    else:
        urls = source_urls(spec["source"], spec.get("category"), config["url_templates"],
                           {k: spec[k] for k in ("reviews", "meta") if k in spec})
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


def all_targets():
    d = f"results/{DATASET}"
    return [
        f"{d}/processed/stats.json",
        f"{d}/graph/stats.json",
        f"{d}/graph/second_order.parquet",
    ]
