"""Configuration mistakes fail at start, in a few lines that name the setting.

Each test runs the real `snakemake` in a copy of the checkout with a user's config file,
the way a user would, and reads its exit code and message.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, copy_checkout, snakemake

pytestmark = pytest.mark.slow

MAX_LINES = 12
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A copy of the checkout for dry runs (they plan, never run, jobs)."""
    return copy_checkout(tmp_path_factory.mktemp("config"))


def dry_run(work: Path, settings: dict, tmp_path: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`snakemake -n --configfile user.yaml` with ``settings`` as the user's file."""
    user = tmp_path / "user.yaml"
    user.write_text(yaml.safe_dump(settings))
    return snakemake(work, "-n", "--cores", "1", "--configfile", str(user), check=False, env=env)


def refusal(proc: subprocess.CompletedProcess) -> str:
    """The message of a run refused at start: short, no schema dump, no job planned."""
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    assert len(text.strip().splitlines()) <= MAX_LINES, text[-3000:]
    assert "Failed validating" not in text and "Job stats" not in text, text[-3000:]
    return text


@pytest.mark.parametrize("name", ["x$(touch PWNED)", "my data", ".."])
def test_unsafe_dataset_name_is_refused_before_any_job(work, tmp_path, name):
    proc = dry_run(work, {"dataset": name, "datasets": {name: {"source": "demo"}}}, tmp_path)
    text = refusal(proc)
    assert f"config: dataset: {name!r} is not allowed" in text
    assert f"config: datasets: name {name!r} is not allowed" in text
    assert not list(work.rglob("PWNED")) and not (tmp_path / "PWNED").exists()


def test_unsafe_variant_name_is_refused_before_any_job(work, tmp_path):
    proc = dry_run(work, {"variants": {"a;b": {}}, "run_variants": ["a;b"]}, tmp_path)
    text = refusal(proc)
    assert "config: variants: name 'a;b' is not allowed" in text
    assert "config: run_variants[0]: 'a;b' is not allowed" in text


PLACEHOLDER = re.compile(r"\{+(input|output|log|params|wildcards|resources|threads)\b([^{}]*)\}+")


def shell_lines() -> list[tuple[str, str]]:
    """(where, line) for every line of a `shell:` block and of the functions such a block calls."""
    files = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    texts = {f.name: f.read_text() for f in files}
    found = []
    for name, text in texts.items():
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if not line.strip().startswith("shell:"):
                continue
            indent = len(line) - len(line.lstrip())
            found.append((f"{name}:{i + 1}", line.split("shell:", 1)[1]))
            for j in range(i + 1, len(lines)):
                if lines[j].strip() and len(lines[j]) - len(lines[j].lstrip()) <= indent:
                    break
                found.append((f"{name}:{j + 1}", lines[j]))
    called = {c for _, line in found for c in re.findall(r"\b([A-Za-z_]\w*)\(", line)}
    for name, text in texts.items():
        for func in called:
            for m in re.finditer(rf"^def {func}\(.*?(?=^\S|\Z)", text, re.M | re.S):
                found += [(f"{name}:def {func}", line) for line in m.group(0).splitlines()]
    return found


def test_shell_commands_quote_every_path_and_wildcard():
    lines = shell_lines()
    assert any("launch.sh" in line for _, line in lines)  # the helper that builds the commands is read too
    unquoted = [
        f"{where}: {m.group(0)}"
        for where, line in lines
        for m in PLACEHOLDER.finditer(line)
        if not m.group(2).endswith(":q")
    ]
    assert not unquoted, "shell placeholders without :q quoting:\n" + "\n".join(unquoted)


def test_backbone_missing_offline_is_refused_at_start(work, tmp_path):
    env = {**OFFLINE, "HF_HOME": str(tmp_path / "empty_hf_home")}
    text = refusal(dry_run(work, {"model": {"backbone": "gpt2"}}, tmp_path, env=env))
    assert "config: model.backbone 'gpt2'" in text and "offline" in text


def _saved_backbone(folder: Path, tokenizer: bool = True) -> Path:
    """A small GPT-2 saved with `save_pretrained`, with (or without) its fast tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from llm4rec.model.tokenization import train_bpe_tokenizer

    texts = [f"item {i} is a fine magazine about topic {i % 7}" for i in range(200)]
    tok = train_bpe_tokenizer(texts, folder / "tok", vocab_size=300, min_frequency=1)
    cfg = GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=16, n_head=2, n_positions=64)
    GPT2LMHeadModel(cfg).save_pretrained(folder / "model")
    if tokenizer:
        tok.save_pretrained(folder / "model")
    return folder / "model"


def test_backbone_in_local_folder_passes_offline(work, tmp_path):
    env = {**OFFLINE, "HF_HOME": str(tmp_path / "empty_hf_home")}
    model = _saved_backbone(tmp_path)
    proc = dry_run(work, {"model": {"backbone": str(model)}}, tmp_path, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "Job stats" in proc.stdout + proc.stderr


def test_backbone_folder_without_tokenizer_is_refused_at_start(work, tmp_path):
    env = {**OFFLINE, "HF_HOME": str(tmp_path / "empty_hf_home")}
    model = _saved_backbone(tmp_path, tokenizer=False)
    text = refusal(dry_run(work, {"model": {"backbone": str(model)}}, tmp_path, env=env))
    assert f"config: model.backbone {str(model)!r}" in text


def test_tiny_heads_must_divide_width(work, tmp_path):
    tiny = {"n_layer": 2, "n_embd": 30, "n_head": 4, "n_positions": 256}
    text = refusal(dry_run(work, {"model": {"tiny": tiny}}, tmp_path))
    assert "config: model.tiny: n_embd (30) must be a multiple of n_head (4)" in text


def test_uppercase_sha256_is_accepted_and_verified(tmp_path):
    repo = copy_checkout(tmp_path / "work")
    demo = repo / "resources" / "demo"
    digests = {
        f"{k}_sha256": hashlib.sha256((demo / f"{k}.json.gz").read_bytes()).hexdigest().upper()
        for k in ("reviews", "meta")
    }
    user = tmp_path / "sha.yaml"
    user.write_text(yaml.safe_dump({"datasets": {"demo": {"source": "demo", **digests}}}))
    snakemake(repo, "resources/raw/demo/download.json", "--cores", "1", "--configfile", str(user))
    assert (repo / "resources" / "raw" / "demo" / "reviews.json.gz").exists()


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"datasets": {"demo": {"source": "demo", "sorce": "demo"}}}, "datasets.demo.sorce"),
        ({"kcore": 5}, "kcore"),
        (
            {"model": {"tiny": {"n_layer": 2, "n_embd": 32, "n_head": 4, "n_positions": 256, "heads": 4}}},
            "model.tiny.heads",
        ),
    ],
)
def test_unknown_key_is_named_in_a_short_message(work, tmp_path, settings, key):
    text = refusal(dry_run(work, settings, tmp_path))
    assert f"config: unknown key {key!r}" in text


# --- names, seeds and lists refused at start ---------------------------------------------


@pytest.mark.parametrize("name", ["popularity", "multivae"])
def test_a_variant_named_like_a_baseline_is_refused_naming_both(work, tmp_path, name):
    settings = {"variants": {name: {"edge_bias": "none"}}, "run_variants": ["full", name]}
    text = refusal(dry_run(work, settings, tmp_path))
    index = ["popularity", "itemknn", "ease", "multivae"].index(name)
    assert f"config: run_variants[1] {name!r} and baselines.run[{index}] {name!r} are two methods of one name" in text


def test_a_variant_named_like_a_baseline_that_is_not_run_is_refused(work, tmp_path):
    """Rules pick a baseline's files by name (curve_inputs of `multivae`), run or not."""
    settings = {"variants": {"multivae": {}}, "run_variants": ["multivae"], "baselines": {"run": ["popularity"]}}
    text = refusal(dry_run(work, settings, tmp_path))
    assert "config: run_variants[0] 'multivae' has the name of the baseline 'multivae' (not in baselines.run" in text


def test_the_baseline_names_are_the_schema_s():
    from llm4rec.core.config import BASELINES

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert list(BASELINES) == schema["properties"]["baselines"]["properties"]["run"]["items"]["enum"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"run_variants": []}, "config: run_variants: [] should be non-empty: at least one variant"),
        ({"seeds": [0, 1, 0]}, "config: seeds: 0 is listed more than once"),
        ({"run_variants": ["full", "full"]}, "config: run_variants: 'full' is listed more than once"),
        ({"baselines": {"run": ["ease", "ease"]}}, "config: baselines.run: 'ease' is listed more than once"),
        ({"data_seed": 2**32}, "config: data_seed: 4294967296 is greater than the maximum of 4294967295"),
        ({"data_seed": -1}, "config: data_seed: -1 is less than the minimum of 0"),
        ({"seeds": [2**40]}, "config: seeds[0]: 1099511627776 is greater than the maximum of 4294967295"),
    ],
)
def test_lists_and_seeds_that_cannot_run_are_refused_at_start(work, tmp_path, settings, message):
    assert message in refusal(dry_run(work, settings, tmp_path))


def test_a_name_too_long_for_a_file_name_is_refused_at_start(work, tmp_path):
    name = "d" * 300
    text = refusal(dry_run(work, {"dataset": name, "datasets": {name: {"source": "demo"}}}, tmp_path))
    assert f"config: dataset: the name {'d' * 24!r}... has 300 characters, at most 100" in text
    assert "config: datasets: the name" in text and "OSError" not in text


def _alias_bomb(levels: int) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * 9)}]" for k in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_alias_bomb(6), "values in all, counting each repetition of a YAML alias (*name)"),
        ("a: &a [1, *a]\n", "config: a YAML alias (*name) refers to a block that contains it"),
    ],
)
def test_a_yaml_alias_bomb_is_refused_before_the_schema_prints_it(work, tmp_path, text, message):
    user = tmp_path / "bomb.yaml"
    user.write_text(text)
    proc = snakemake(work, "-n", "--cores", "1", "--configfile", str(user), check=False)
    out = refusal(proc)
    assert message in out and "unknown key" not in out


@pytest.mark.parametrize(
    ("args", "pip"),
    [
        ([], "pip install --quiet  'torch==2.13.0'"),
        (
            ["TORCH=torch==2.13.0+cpu", "TORCH_INDEX=https://download.pytorch.org/whl/cpu"],
            "pip install --quiet --index-url 'https://download.pytorch.org/whl/cpu' 'torch==2.13.0+cpu'",
        ),
    ],
)
def test_make_setup_takes_the_torch_requirement_and_index(tmp_path, args, pip):
    """The torch build is the user's choice: `make -n` shows the pip command."""
    proc = subprocess.run(
        ["make", "-n", "-B", "setup", f"VENV={tmp_path / 'venv'}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"{tmp_path / 'venv'}/bin/python -m {pip}" in proc.stdout
