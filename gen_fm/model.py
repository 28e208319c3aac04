"""The foundation model: a standard Llama decoder over semantic-ID tokens, and its model folder.

Standard ``LlamaForCausalLM`` (no custom code) so vLLM and ``AutoModelForCausalLM`` load the folder
as it is. The folder is self-sufficient for serving:
- ``config.json`` + ``model.safetensors`` (+ ``generation_config.json``): the Llama model;
- ``tokenizer.json`` + ``tokenizer_config.json``: WordLevel tokenizer over the model's layout;
- ``semantic_ids/``: a copy of the ID artifact the model was trained with (the title <-> ID map);
- ``co_engagement/table.safetensors`` and ``title_tags/tags.json``: facts of the training data that
  serving needs (which titles members watch together; what they wrote about each title, for search);
- ``fusion/fusion.json`` (once chosen): how the served home row fuses this model's ranking with the
  co-engaged titles, chosen on the validation split (``eval.next_title.choose_fusion``);
- ``manifest.json``: kind ``gen_fm``, the ``PretrainConfig``, the token layout, the sequence config,
  the ID artifact's manifest hash (parent), the data fingerprint, the training summary and the
  hashes of the payload files.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from gen_fm.co_engagement import CO_ENGAGEMENT_FILE, CoEngagement, load_co_engagement, save_co_engagement
from gen_fm.config import PretrainConfig
from gen_fm.tokenizer import PromptEncoder, build_tokenizer, check_tokenizer
from semantic_ids.ids import SemanticIDs
from semantic_ids.layout import BOS, EOS, PAD, TokenLayout
from core.artifacts import (
    ArtifactError,
    atomic_dir,
    file_sha256,
    make_manifest,
    manifest_hash,
    read_json,
    read_manifest,
    require_files,
    write_json,
)
from core.sequences import SequenceConfig

KIND = "gen_fm"
IDS_SUBDIR = "semantic_ids"
_PAYLOAD = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
# What members wrote about each title (``RecData.title_tags``: item_id -> tags, most written first):
# the search canvas's index matches queries against it. Keyed by item ID, so it survives new IDs.
TITLE_TAGS_FILE = "title_tags/tags.json"
# The fusion constants chosen for this model on the validation split, with the figures behind them.
FUSION_FILE = "fusion/fusion.json"
# A title-token model trained with its own code rows for titles (``titles.title_code_rows`` "own"):
# the (C, H) table a new title's row is composed from (``gen_fm.titles.extend_titles``).
TITLE_CODE_ROWS_FILE = "title_code_rows.safetensors"


def max_positions(config: PretrainConfig, layout: TokenLayout, max_history: int) -> int:
    """Room for the longest sequence (a window of max_history + 1 titles after the prefix of bos,
    member and canvas tokens) plus the configured headroom for tokens later stages prepend."""
    return 3 + (max_history + 1) * layout.sid_length + config.model.position_headroom


def llama_config(config: PretrainConfig, layout: TokenLayout, max_history: int) -> LlamaConfig:
    unset = [n for n in ("num_layers", "dropout") if n in config.model.left_to_data]
    if unset:
        raise ValueError(
            f"model {', '.join(unset)} left to the data: build the model from the config the run "
            f"trains with (gen_fm.train.config_for_run sets them)"
        )
    return LlamaConfig(
        vocab_size=layout.vocab_size,  # exact row count: later stages append rows for new tokens
        hidden_size=config.model.hidden_size,
        intermediate_size=config.model.intermediate_size,
        num_hidden_layers=config.model.num_layers,
        num_attention_heads=config.model.num_heads,
        num_key_value_heads=config.model.kv_heads,
        head_dim=config.model.head_dim,
        max_position_embeddings=max_positions(config, layout, max_history),
        rope_parameters={"rope_type": "default", "rope_theta": float(config.model.rope_theta)},
        attention_dropout=config.model.dropout,
        tie_word_embeddings=True,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        dtype="float32",
    )


def build_model(config: PretrainConfig, layout: TokenLayout, max_history: int) -> LlamaForCausalLM:
    """A freshly initialised model (seed torch before calling for reproducible weights)."""
    model = LlamaForCausalLM(llama_config(config, layout, max_history))
    if model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        raise RuntimeError("input and output embeddings are not tied")
    return model


@torch.no_grad()
def sasrec_init(model: LlamaForCausalLM, code_rows: tuple[int, int]) -> None:
    """SASRec's start (in place): every matrix xavier-normal, the code tokens' embedding rows
    [lo, hi) as a table of their own (SASRec's code table), every norm's gain 1."""
    for p in model.parameters():
        if p.ndim >= 2:
            torch.nn.init.xavier_normal_(p)
    lo, hi = code_rows
    torch.nn.init.xavier_normal_(model.get_input_embeddings().weight[lo:hi])
    for m in model.modules():
        if isinstance(m, LlamaRMSNorm):
            m.weight.fill_(1.0)


def add_hidden_dropout(model: LlamaForCausalLM, p: float, spared: tuple[int, int] | None = None) -> list:
    """Dropout on the token embeddings and on every residual branch (attention and MLP outputs).

    Llama has attention dropout only; small recommendation datasets overfit without the residual
    dropout GPT-2 and T5 (TIGER's backbone) have. Forward hooks add it for training without changing
    the architecture, so the saved folder stays a standard Llama that vLLM loads. The hooks follow
    ``module.training``: evaluation is unaffected. `spared` = [lo, hi): positions whose input token
    id is in that range get no dropout (a title-token model's code-token branches). Returns the hook
    handles (``.remove()`` them).
    """
    if p <= 0:
        return []
    where = None
    handles = []
    if spared is not None:
        where = _DropWhere(*spared)
        handles.append(model.model.register_forward_pre_hook(where.catch, with_kwargs=True))
    hook = _dropout_hook(p, where)
    return (
        handles
        + [model.model.embed_tokens.register_forward_hook(hook)]
        + residual_dropout(model.model.layers, p, where)
    )


def residual_dropout(layers, p: float, where: _DropWhere | None = None) -> list:
    """Dropout on the attention and MLP outputs of Llama decoder `layers` (forward hooks that follow
    ``module.training``; `where`: only at the positions it marks). Returns the hook handles."""
    if p <= 0:
        return []
    hook = _dropout_hook(p, where)
    return [
        m.register_forward_hook(hook)
        for layer in layers
        for m in (layer.self_attn.o_proj, layer.mlp.down_proj)
    ]


class _DropWhere:
    """The positions of the current forward that take dropout: those whose input token id is
    outside [lo, hi), read from the input ids by a pre-hook on the Llama's decoder."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = int(lo), int(hi)
        self.mask: torch.Tensor | None = None  # (B, T, 1) bool, True = dropout applies

    def catch(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.mask = None if ids is None else ((ids < self.lo) | (ids >= self.hi))[..., None]


def _dropout_hook(p: float, where: _DropWhere | None = None):
    def hook(module, inputs, output):
        if not module.training:
            return output
        dropped = torch.nn.functional.dropout(output, p, training=True)
        if where is None or where.mask is None:
            return dropped
        return torch.where(where.mask, dropped, output)

    return hook


def num_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def save_model(
    out_dir: str | Path,
    model: LlamaForCausalLM,
    layout: TokenLayout,
    ids: SemanticIDs,
    config: PretrainConfig,
    seq_config: SequenceConfig,
    *,
    data_fingerprint: str,
    dataset: str,
    training: dict[str, Any],
    parents: dict[str, str] | None = None,
    data_end: int | None = None,
    co_engagement: CoEngagement | None = None,
    title_tags: dict[str, list[str]] | None = None,
    fusion: dict | None = None,
    title_code_rows: torch.Tensor | None = None,
) -> Path:
    """Write the model folder atomically: an existing folder is replaced only on success.

    `parents` adds manifest hashes of further parent artifacts (e.g. ``init_from``: the model a
    refresh fine-tune started from) beside the ID artifact's. `data_end` is the newest event time
    (unix seconds) of the data the model was built from, None for data without timestamps:
    ``sidrec refresh`` treats later events as fresh. `co_engagement`: the training data's
    co-engagement table (``gen_fm.co_engagement``), written beside the weights for serving;
    `title_tags`: what members wrote about each title (``RecData.title_tags``), likewise ({}: the
    data has no tags, and the folder says so; None: nothing is written, as in older folders);
    `fusion`: the home row's fusion constants chosen for these weights (``FUSION_FILE``);
    `title_code_rows`: the model's own code rows for titles, which a model trained with
    ``title_code_rows="own"`` must be saved with (``TITLE_CODE_ROWS_FILE``)."""
    if ids.path is None or not (Path(ids.path) / "manifest.json").is_file():
        raise ValueError(
            "the ID artifact must be on disk (SemanticIDs.load): the model folder "
            "copies it and records its manifest hash"
        )
    if model.config.vocab_size != layout.vocab_size:
        raise ValueError(f"model vocab {model.config.vocab_size} != layout vocab {layout.vocab_size}")
    if layout.codebook_sizes != ids.codebook_sizes:
        raise ValueError("the layout was not built from this ID artifact")
    if (title_code_rows is not None) != (config.titles.title_code_rows == "own"):
        raise ValueError(
            f"titles.title_code_rows is {config.titles.title_code_rows!r}: the folder needs the "
            f"model's own code rows exactly when it is 'own'"
        )
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as stage:
        model.save_pretrained(stage, safe_serialization=True)
        build_tokenizer(layout).save_pretrained(stage)
        shutil.copytree(ids.path, stage / IDS_SUBDIR)
        payload = list(_PAYLOAD)
        if co_engagement is not None:
            if co_engagement.num_items != ids.num_items:
                raise ValueError(
                    f"the co-engagement table covers {co_engagement.num_items} titles, "
                    f"the ID artifact {ids.num_items}"
                )
            save_co_engagement(stage / CO_ENGAGEMENT_FILE, co_engagement)
            payload.append(CO_ENGAGEMENT_FILE)
        if title_tags is not None:
            (stage / TITLE_TAGS_FILE).parent.mkdir(parents=True)
            write_json(stage / TITLE_TAGS_FILE, title_tags)
            payload.append(TITLE_TAGS_FILE)
        if title_code_rows is not None:
            save_file(
                {"weight": title_code_rows.detach().float().cpu().contiguous()}, stage / TITLE_CODE_ROWS_FILE
            )
            payload.append(TITLE_CODE_ROWS_FILE)
        if fusion is not None:
            (stage / FUSION_FILE).parent.mkdir(parents=True)
            write_json(stage / FUSION_FILE, fusion)
            payload.append(FUSION_FILE)
        manifest = make_manifest(
            KIND,
            config,
            parents={IDS_SUBDIR: manifest_hash(ids.path), **(parents or {})},
            semantic_ids_source=str(ids.path),
            layout=layout.to_json(),
            sequence_config=seq_config,
            data={"dataset": dataset, "fingerprint": data_fingerprint, "time_end": data_end},
            num_parameters=num_parameters(model),
            training=training,
            files={name: file_sha256(stage / name) for name in payload},
        )
        write_json(stage / "manifest.json", manifest)
    return out_dir


@dataclass
class GenFM:
    """A loaded model folder: everything decoding and later stages need, read from the folder."""

    model: LlamaForCausalLM
    tokenizer: Any  # PreTrainedTokenizerFast
    ids: SemanticIDs
    layout: TokenLayout
    config: PretrainConfig
    seq_config: SequenceConfig
    manifest: dict[str, Any]
    path: Path

    def prompt_encoder(self) -> PromptEncoder:
        return PromptEncoder.from_ids(self.ids, self.config.model.num_user_buckets, self.layout)

    def co_engagement(self) -> CoEngagement | None:
        """The training data's co-engagement table, or None for a folder written before it existed."""
        path = self.path / CO_ENGAGEMENT_FILE
        return load_co_engagement(path) if path.is_file() else None

    def fusion(self) -> dict[str, Any] | None:
        """The fusion constants chosen for this model on validation, or None (not chosen yet)."""
        if FUSION_FILE not in self.manifest.get("files", {}):
            return None
        return read_json(self.path / FUSION_FILE)

    def title_code_rows(self) -> torch.Tensor | None:
        """The code rows a new title's row is composed from when the model has its own
        (``titles.title_code_rows`` "own"); None: the embedding's own code-token rows."""
        if self.config.titles.title_code_rows != "own":
            return None
        if TITLE_CODE_ROWS_FILE not in self.manifest.get("files", {}):
            raise ArtifactError(
                f"{self.path} was trained with its own title code rows but has no {TITLE_CODE_ROWS_FILE}"
            )
        return load_file(self.path / TITLE_CODE_ROWS_FILE)["weight"]

    def title_tags(self) -> dict[str, list[str]] | None:
        """What members wrote about each title ({}: the data has none), or None for a folder
        written before pretraining saved it."""
        path = self.path / TITLE_TAGS_FILE
        if not path.is_file():
            return None
        tags = read_json(path)
        if not isinstance(tags, dict) or not all(isinstance(v, list) for v in tags.values()):
            raise ArtifactError(f"{path} is not an item_id -> list of tags map")
        return tags


def add_fusion(model_dir: str | Path, fusion: dict[str, Any]) -> Path:
    """Write the chosen fusion constants into a model folder and list them in its manifest.

    The file is written first and the manifest after it (each atomically): a crash in between leaves
    a file the manifest does not list, which ``GenFM.fusion`` ignores."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir, KIND)
    for key in ("fusion_k", "fusion_weight"):
        if key not in fusion:
            raise ValueError(f"fusion constants need {key!r}")
    (model_dir / FUSION_FILE).parent.mkdir(exist_ok=True)
    write_json(model_dir / FUSION_FILE, fusion)
    manifest["files"][FUSION_FILE] = file_sha256(model_dir / FUSION_FILE)
    write_json(model_dir / "manifest.json", manifest)
    return model_dir / FUSION_FILE


def check_device(device: str | torch.device) -> torch.device:
    """The torch device named, or a clear error when this machine has no such device."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a torch device name (cpu, cuda, cuda:1, ...)") from e
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"device {device!r}: this machine has no CUDA GPU visible to torch "
                f"(torch {torch.__version__}); use --device cpu"
            )
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r}: only {count} CUDA device(s) here (0..{count - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: sidrec runs on cpu, cuda or mps")
    return dev


def load_model(path: str | Path, device: str | torch.device = "cpu", verify: bool = True) -> GenFM:
    """Load a model folder with the Auto classes and check it against its manifest."""
    path = Path(path)
    manifest = read_manifest(path, KIND)
    require_files(path, _PAYLOAD + [f"{IDS_SUBDIR}/manifest.json"])
    for key in ("layout", "sequence_config", "parents", "files"):
        if key not in manifest:
            raise ArtifactError(f"{path}/manifest.json has no '{key}'")
    if verify:
        for name, digest in manifest["files"].items():
            if file_sha256(path / name) != digest:
                raise ArtifactError(f"{path}/{name} does not match the hash in manifest.json")
        if manifest_hash(path / IDS_SUBDIR) != manifest["parents"].get(IDS_SUBDIR):
            raise ArtifactError(f"{path}/{IDS_SUBDIR} is not the ID artifact the model was trained on")
    layout = TokenLayout.from_json(manifest["layout"])
    ids = SemanticIDs.load(path / IDS_SUBDIR)
    if ids.codebook_sizes != layout.codebook_sizes:
        raise ArtifactError(
            f"{path}: layout codebooks {layout.codebook_sizes} differ from the ID map's {ids.codebook_sizes}"
        )
    tokenizer = AutoTokenizer.from_pretrained(path)
    check_tokenizer(tokenizer, layout)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(check_device(device)).eval()
    if model.config.vocab_size != layout.vocab_size:
        raise ArtifactError(f"{path}: model vocab {model.config.vocab_size} != layout {layout.vocab_size}")
    return GenFM(
        model=model,
        tokenizer=tokenizer,
        ids=ids,
        layout=layout,
        config=PretrainConfig.from_manifest(manifest["config"]),
        seq_config=SequenceConfig(**manifest["sequence_config"]),
        manifest=manifest,
        path=path,
    )
