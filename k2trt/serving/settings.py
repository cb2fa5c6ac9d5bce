"""``k2trt repo``: fill the template repository ``triton_repo/`` for an engine dir from typed settings.

Every ``config.pbtxt`` in the template is a :class:`string.Template`; :meth:`RepoSettings.values` gives every value
and :func:`write_repo` substitutes with ``substitute`` (a missing value is an error naming the file and the key, and
no ``${...}`` survives), then parses each result with Triton's own ``ModelConfig`` protobuf schema (the one
tritonserver reads ``config.pbtxt`` with) and checks what the schema cannot: the model name, the engine tensors
(:mod:`k2trt.serving.tensors`), and that the ensemble's steps name models of the repository.

The engine model depends on the engine dir's backend:

- ``torch`` (``runtime.json``): ``tensorrt_llm/config.torch.pbtxt`` + ``1/model.py``, the Python model running
  k2trt's runtime with the tensorrtllm backend's tensors;
- ``trtllm`` (``manifest.json`` backend ``trtllm``: TensorRT-LLM engines): ``tensorrt_llm/config.trtllm.pbtxt``,
  Triton's ``tensorrtllm`` backend reading the engines from ``gpt_model_path``.

The repository also gets ``k2trt_repo.json`` (the settings; tritonserver ignores files at the top level), which
``k2trt serve`` reads for the backend and world size.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from k2trt.errors import K2Error

REPO_RECORD = "k2trt_repo.json"
MODELS = ("tensorrt_llm", "preprocessing", "postprocessing", "k2_bls", "ensemble")
BACKENDS = ("torch", "trtllm")
BATCHING_STRATEGIES = ("inflight_fused_batching", "v1")
SCHEDULER_POLICIES = ("max_utilization", "guaranteed_no_evict")


def template_dir() -> Path:
    """``triton_repo/`` beside the k2trt package (a source checkout or an editable install)."""
    d = Path(__file__).resolve().parents[2] / "triton_repo"
    if not (d / "ensemble" / "config.pbtxt").is_file():
        raise K2Error(f"the template repository is not at {d}; run k2trt from its source checkout (pip install -e .) "
                      f"or pass --template")
    return d


@dataclass(frozen=True)
class RepoSettings:
    """Everything the template needs. Sizes come from the engine dir; the rest are serving choices."""

    engine_dir: Path
    """Absolute path of the engine dir, as the serving machine sees it."""
    backend: str
    """``torch`` or ``trtllm``."""
    tokenizer_dir: Path
    """Holds ``tiktoken.model`` + ``tokenizer_config.json`` (+ ``chat_template.jinja``)."""
    served_model_name: str
    """The ``model`` field of k2_bls's responses."""
    world_size: int
    """Ranks of the engine (torch: started by the runtime; trtllm: one tritonserver per rank under mpirun)."""
    max_batch_size: int
    """Triton's ``max_batch_size`` of the batched models: the engine's batch limit."""
    max_seq_len: int
    """Prompt + generated tokens per request (k2_bls refuses requests beyond it)."""
    max_queue_delay_microseconds: int = 0
    """Dynamic batching delay: 0, the engine batches across requests itself."""
    max_queue_size: int = 256
    """Requests queued in Triton per model before it refuses more."""
    exclude_input_in_output: bool = True
    """Default for the engine model: return only generated ids (a request's own tensor overrides it)."""
    default_max_tokens: int = 512
    """k2_bls: ``max_tokens`` of a request without one (capped by the room left in the context)."""
    preprocessing_instance_count: int = 1
    postprocessing_instance_count: int = 1
    bls_instance_count: int = 1
    skip_special_tokens: bool = False
    """postprocessing: leave special tokens out of ``text_output`` (K2's tool-call markers are special tokens)."""
    engine_threads: int = 1
    """torch: torch intra-op threads of rank 0 (the other ranks use one each)."""
    engine_process: bool = True
    """torch: step the engine in a process of its own (:mod:`k2trt.runtime.engine_process`), not in the Python
    stub's, so the engine does not share a GIL with the per-token work of sending responses."""
    batching_strategy: str = "inflight_fused_batching"
    """trtllm: ``gpt_model_type``."""
    batch_scheduler_policy: str = "max_utilization"
    """trtllm: ``max_utilization`` or ``guaranteed_no_evict``."""
    kv_cache_free_gpu_mem_fraction: float = 0.9
    """trtllm: share of the GPU memory left after the weights that the KV cache takes."""
    cancellation_check_period_ms: int = 100
    """trtllm: how often the backend checks for cancelled requests."""
    enable_chunked_context: bool = True
    """trtllm: prefill long prompts in chunks, batched with decodes."""
    enable_kv_cache_reuse: bool = False
    """trtllm: reuse cached blocks of shared prompt prefixes."""

    def validate(self) -> None:
        """Every problem at once (K2Error)."""
        p: list[str] = []
        if self.backend not in BACKENDS:
            p.append(f"backend: expected one of {list(BACKENDS)}, got {self.backend!r}")
        if not self.engine_dir.is_absolute() or not self.tokenizer_dir.is_absolute():
            p.append("engine_dir and tokenizer_dir must be absolute paths (Triton loads models from anywhere)")
        if not (self.tokenizer_dir / "tiktoken.model").is_file():
            p.append(f"tokenizer_dir: no tiktoken.model in {self.tokenizer_dir}")
        if not self.served_model_name or any(c in self.served_model_name for c in '"\\\n'):
            p.append(f"served_model_name: expected a non-empty name without quotes, got {self.served_model_name!r}")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", int) and (isinstance(v, bool) or not isinstance(v, int)):
                p.append(f"{f.name}: expected an integer, got {v!r}")
            if f.type in ("bool", bool) and not isinstance(v, bool):
                p.append(f"{f.name}: expected true or false, got {v!r}")
        for name in ("world_size", "max_batch_size", "max_seq_len", "default_max_tokens", "engine_threads",
                     "preprocessing_instance_count", "postprocessing_instance_count", "bls_instance_count",
                     "cancellation_check_period_ms"):
            v = getattr(self, name)
            if isinstance(v, int) and v < 1:
                p.append(f"{name}: must be >= 1, got {v}")
        for name in ("max_queue_delay_microseconds", "max_queue_size"):
            v = getattr(self, name)
            if isinstance(v, int) and v < 0:
                p.append(f"{name}: must be >= 0, got {v}")
        if self.batching_strategy not in BATCHING_STRATEGIES:
            p.append(f"batching_strategy: expected one of {list(BATCHING_STRATEGIES)}, got {self.batching_strategy!r}")
        if self.batch_scheduler_policy not in SCHEDULER_POLICIES:
            p.append(f"batch_scheduler_policy: expected one of {list(SCHEDULER_POLICIES)}, got "
                     f"{self.batch_scheduler_policy!r}")
        if not 0 < self.kv_cache_free_gpu_mem_fraction <= 1:
            p.append(f"kv_cache_free_gpu_mem_fraction: must be in (0, 1], got {self.kv_cache_free_gpu_mem_fraction}")
        if p:
            raise K2Error(p)

    def values(self) -> dict[str, str]:
        """The template variables, as the strings that go into ``config.pbtxt``."""

        def s(v: Any) -> str:
            return ("true" if v else "false") if isinstance(v, bool) else str(v)

        return {
            "triton_max_batch_size": s(self.max_batch_size),
            "max_queue_delay_microseconds": s(self.max_queue_delay_microseconds),
            "max_queue_size": s(self.max_queue_size),
            "engine_dir": str(self.engine_dir),
            "tokenizer_dir": str(self.tokenizer_dir),
            "exclude_input_in_output": s(self.exclude_input_in_output),
            "engine_threads": s(self.engine_threads),
            "engine_process": s(self.engine_process),
            "served_model_name": self.served_model_name,
            "max_seq_len": s(self.max_seq_len),
            "default_max_tokens": s(self.default_max_tokens),
            "preprocessing_instance_count": s(self.preprocessing_instance_count),
            "postprocessing_instance_count": s(self.postprocessing_instance_count),
            "bls_instance_count": s(self.bls_instance_count),
            "skip_special_tokens": s(self.skip_special_tokens),
            "batching_strategy": self.batching_strategy,
            "batch_scheduler_policy": self.batch_scheduler_policy,
            "kv_cache_free_gpu_mem_fraction": s(self.kv_cache_free_gpu_mem_fraction),
            "cancellation_check_period_ms": s(self.cancellation_check_period_ms),
            "enable_chunked_context": s(self.enable_chunked_context),
            "enable_kv_cache_reuse": s(self.enable_kv_cache_reuse),
        }

    def to_json(self) -> dict[str, Any]:
        return {f.name: (str(v) if isinstance(v := getattr(self, f.name), Path) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RepoSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise K2Error(f"{REPO_RECORD}: unknown field(s) {unknown}")
        return cls(**{k: Path(v) if k in ("engine_dir", "tokenizer_dir") else v for k, v in data.items()})


# ----------------------------------------------------------------------------------------------- engine dirs


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise K2Error(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise K2Error(f"{path}: expected a JSON object")
    return data


def engine_backend(engine_dir: Path) -> str:
    """``torch`` or ``trtllm``; K2Error for anything else (naming what was found)."""
    if (engine_dir / "runtime.json").is_file():
        return "torch"
    manifest = engine_dir / "manifest.json"
    backend = _read_json(manifest).get("backend") if manifest.is_file() else None
    if backend == "trtllm":
        return "trtllm"
    if backend == "llmapi":
        raise K2Error(f"{engine_dir} is an llmapi engine dir: TensorRT-LLM's llmapi Triton model serves it (its "
                      f"triton/ folder with the model.py of the TensorRT-LLM container), not this repository; "
                      f"k2trt repo fills torch and trtllm engine dirs")
    if not engine_dir.is_dir():
        raise K2Error(f"--engine {engine_dir}: no such directory")
    raise K2Error(f"--engine {engine_dir}: not an engine dir (no runtime.json of a torch engine, no manifest.json of "
                  f"a trtllm one); build one with `k2trt build`")


def settings_for_engine(engine_dir: str | Path, *, tokenizer_dir: str | Path | None = None,
                        served_model_name: str | None = None, **overrides: Any) -> RepoSettings:
    """Settings for an engine dir: backend, world size and limits read from it; ``overrides`` set the others."""
    engine_dir = Path(engine_dir).resolve()
    backend = engine_backend(engine_dir)
    if backend == "torch":
        from k2trt.runtime.engine_dir import read_runtime_config
        from k2trt.runtime.weights import read_converted

        rc = read_runtime_config(engine_dir)
        world, batch, seq = read_converted(engine_dir)[1].world_size, rc.max_batch_size, rc.max_seq_len
    else:
        cfg = _read_json(engine_dir / "config.json") if (engine_dir / "config.json").is_file() else None
        if cfg is None:
            raise K2Error(f"{engine_dir}: no config.json (TensorRT-LLM writes it beside the rank engines)")
        try:
            build, mapping = cfg["build_config"], cfg["pretrained_config"]["mapping"]
            world, batch, seq = int(mapping["world_size"]), int(build["max_batch_size"]), int(build["max_seq_len"])
        except (KeyError, TypeError, ValueError) as e:
            raise K2Error(f"{engine_dir / 'config.json'}: missing or bad {e} (expected TensorRT-LLM's engine config: "
                          f"build_config.max_batch_size/max_seq_len, pretrained_config.mapping.world_size)") from None
    tok = Path(tokenizer_dir).resolve() if tokenizer_dir else engine_dir
    if not (tok / "tiktoken.model").is_file():
        raise K2Error(f"no tokenizer in {tok} (tiktoken.model + tokenizer_config.json); pass --tokenizer-dir "
                      f"(the HF checkpoint)")
    s = RepoSettings(engine_dir=engine_dir, backend=backend, tokenizer_dir=tok,
                     served_model_name=served_model_name or engine_dir.name, world_size=world, max_batch_size=batch,
                     max_seq_len=seq, **overrides)
    s.validate()
    return s


# ----------------------------------------------------------------------------------------------- the repository


def fill_template(text: str, values: dict[str, str], *, where: str) -> str:
    """``text`` with every ``${key}`` replaced; K2Error naming ``where`` and the key when one has no value."""
    try:
        out = string.Template(text).substitute(values)
    except KeyError as e:
        raise K2Error(f"{where}: no value for ${{{e.args[0]}}}") from None
    except ValueError as e:  # "$" followed by something that is not a name
        raise K2Error(f"{where}: bad placeholder ({e})") from None
    if "${" in out:
        raise K2Error(f"{where}: '${{' survived the substitution")
    return out


def parse_model_config(text: str, *, where: str):
    """``text`` as Triton's ``inference.ModelConfig`` (tritonserver's own schema); K2Error with its message."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise K2Error(f"{where}: not a valid Triton model config: {e}") from None


def check_model_config(name: str, cfg, *, where: str) -> None:
    """What the schema does not check: the name, and each model's tensors against :mod:`k2trt.serving.tensors`."""
    from tritonclient.grpc import model_config_pb2

    from k2trt.serving.tensors import MODEL_TENSORS

    if cfg.name != name:
        raise K2Error(f"{where}: name {cfg.name!r} does not match its directory {name!r}")
    problems = []
    inputs, outputs = MODEL_TENSORS[name]
    for kind, declared, specs in (("input", cfg.input, inputs), ("output", cfg.output, outputs)):
        got = {t.name: t for t in declared}
        for spec in specs:
            t = got.pop(spec.name, None)
            if t is None:
                problems.append(f"{where}: {kind} {spec.name!r} is missing")
                continue
            have = [model_config_pb2.DataType.Name(t.data_type), list(t.dims)]
            want = [spec.data_type, list(spec.dims)]
            if kind == "input":
                scalar = t.HasField("reshape") and not t.reshape.shape
                have += [f"optional={t.optional}", f"reshape_scalar={scalar}", f"ragged={t.allow_ragged_batch}"]
                want += [f"optional={spec.optional}", f"reshape_scalar={spec.reshape_scalar}", f"ragged={spec.ragged}"]
            if have != want:
                problems.append(f"{where}: {kind} {spec.name!r} is {have}; k2trt's contract says {want}")
        problems += [f"{where}: {kind} {n!r} is not in k2trt's contract (k2trt/serving/tensors.py)" for n in got]
    if problems:
        raise K2Error(problems)


def write_repo(*, settings: RepoSettings, out: str | Path, template: str | Path | None = None,
               force: bool = False) -> Path:
    """Write the filled repository to ``out`` (replaced with ``force``); returns ``out``."""
    settings.validate()
    src = Path(template) if template else template_dir()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise K2Error(f"--out {out} exists and is not empty; pass --force to replace it")
        if not (out / REPO_RECORD).is_file():
            raise K2Error(f"--out {out} is not a k2trt repository (no {REPO_RECORD}); refusing to replace it")
    values = settings.values()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in MODELS:
        mdir = src / name
        cfg_name = f"config.{settings.backend}.pbtxt" if name == "tensorrt_llm" else "config.pbtxt"
        cfg_src = mdir / cfg_name
        if not cfg_src.is_file():
            raise K2Error(f"template {src}: {name}/{cfg_name} is missing")
        where = f"{name}/{cfg_name}"
        text = fill_template(cfg_src.read_text(), values, where=where)
        check_model_config(name, parse_model_config(text, where=where), where=where)
        (tmp / name / "1").mkdir(parents=True)
        (tmp / name / "config.pbtxt").write_text(text)
        # model.py: Python-backend models only (the trtllm engine model is the tensorrtllm backend's)
        model_py = mdir / "1" / "model.py"
        if model_py.is_file() and not (name == "tensorrt_llm" and settings.backend != "torch"):
            shutil.copyfile(model_py, tmp / name / "1" / "model.py")
    _check_ensemble(tmp)
    (tmp / REPO_RECORD).write_text(json.dumps(settings.to_json(), indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _check_ensemble(repo: Path) -> None:
    cfg = parse_model_config((repo / "ensemble" / "config.pbtxt").read_text(), where="ensemble/config.pbtxt")
    for step in cfg.ensemble_scheduling.step:
        if not (repo / step.model_name / "config.pbtxt").is_file():
            raise K2Error(f"ensemble/config.pbtxt: step model {step.model_name!r} is not in the repository")


def read_repo_settings(repo: str | Path) -> RepoSettings:
    """The settings a repository was written with (``k2trt_repo.json``)."""
    path = Path(repo) / REPO_RECORD
    if not path.is_file():
        raise K2Error(f"{repo}: no {REPO_RECORD}; write the repository with `k2trt repo`")
    return RepoSettings.from_json(_read_json(path))


def model_parameters(args: dict[str, Any]) -> dict[str, str]:
    """The ``parameters`` of a Python model's config (``args["model_config"]`` in ``initialize``) as strings."""
    cfg = json.loads(args["model_config"])
    return {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}


def make_repo(*, engine: str | Path, out: str | Path, tokenizer_dir: str | Path | None = None,
              served_model_name: str | None = None, template: str | Path | None = None, force: bool = False,
              **overrides: Any) -> tuple[Path, RepoSettings]:
    """``k2trt repo``: settings from the engine dir (+ ``overrides``), the filled repository at ``out``."""
    settings = settings_for_engine(engine, tokenizer_dir=tokenizer_dir, served_model_name=served_model_name,
                                   **overrides)
    return write_repo(settings=settings, out=out, template=template, force=force), settings
