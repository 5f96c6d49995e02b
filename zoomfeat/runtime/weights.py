"""Safe weight loading and model-hub lookup: one home for the model, the encoders and any later model.

- :func:`load_state_dict_file` reads ``.safetensors`` or a torch file with
  ``torch.load(weights_only=True)``: nothing in a file is ever executed. A file that needs
  arbitrary Python objects is refused, naming the object type it asked for.
- :func:`parse_hub_id` / :func:`hub_file` resolve a model-hub id (``owner/name[/subfolder]``,
  optionally prefixed ``hf://``, ``hf-hub:`` or ``hf:``) to a file in huggingface_hub's cache,
  downloading it when the machine is online; every failure becomes a
  :class:`~zoomfeat.runtime.errors.WeightsNotFoundError` that says how to pass a local path.
- :func:`key_mismatch_lines` names missing / unexpected / misshapen keys in one wording.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from zoomfeat.runtime.errors import WeightsError, WeightsNotFoundError

# ------------------------------------------------------------------------------------------------
# key checks


def names_preview(keys: list[str], limit: int = 12) -> str:
    """The first ``limit`` names, comma-separated, with a count of the rest."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


def _shape(v: Any) -> tuple[int, ...]:
    return tuple(v.shape) if hasattr(v, "shape") else tuple(v)


def key_mismatch_lines(
    found: Mapping[str, Any], expected: Mapping[str, Any], *, optional: tuple[str, ...] = ()
) -> list[str]:
    """Lines naming missing / unexpected / misshapen keys (values: tensors or shapes); [] when they fit.

    Expected keys starting with a prefix in ``optional`` may be absent.
    """
    missing = [k for k in expected if k not in found and not k.startswith(optional or ("\0",))]
    unexpected = [k for k in found if k not in expected]
    misshapen = [
        f"{k} (file {list(_shape(found[k]))}, model {list(_shape(expected[k]))})"
        for k in expected
        if k in found and _shape(found[k]) != _shape(expected[k])
    ]
    lines = []
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {names_preview(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {names_preview(unexpected)}")
    if misshapen:
        lines.append(f"  misshapen keys ({len(misshapen)}): {names_preview(misshapen)}")
    return lines


# ------------------------------------------------------------------------------------------------
# safe loading


def _refuse(path: Path, err: Exception) -> WeightsError:
    msg = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", msg)
    what = f" (it holds an object of type {found[1]})" if found else ""
    return WeightsError(
        f"{path}: refusing to load this file: it needs arbitrary Python objects unpickled{what}. "
        "zoomfeat only reads plain tensors (torch.load(weights_only=True) or safetensors) and never runs code "
        "from a checkpoint. Re-save its state_dict as a flat dict of tensors (torch.save(model.state_dict(), ...)) "
        "or as safetensors, where you trust the file."
    )


def _torch_load(path: Path) -> Any:
    for mmap in (True, False):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as err:
            if "Unsupported global" in str(err):
                raise _refuse(path, err) from err
            found = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
            why = found[1].strip() if found else str(err).splitlines()[0]
            raise WeightsError(
                f"{path}: not a readable torch checkpoint (the weights-only unpickler rejected it: {why})"
            ) from err
        except RuntimeError as err:
            if mmap and "mmap" in str(err).lower():
                continue  # legacy (non-zip) serialisation: read it without mmap
            if "weights only" in str(err).lower():
                raise _refuse(path, err) from err
            raise WeightsError(f"{path}: not a readable torch checkpoint ({err})") from err
        except Exception as err:  # zip/pickle garbage raises KeyError, EOFError, OSError ...
            raise WeightsError(
                f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})"
            ) from err
    raise AssertionError("unreachable")  # pragma: no cover


def load_state_dict_file(
    path: str | os.PathLike, *, wrappers: Sequence[str] = ("state_dict",), tensors_only: bool = False
) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from ``.ckpt``/``.pt``/``.pth``/``.bin`` (weights_only) or ``.safetensors``.

    Args:
        path: the weight file.
        wrappers: keys of a wrapping dict to unwrap, first match wins (a Lightning
            ``{"state_dict": {...}}``; encoders also accept ``model``/``teacher``).
        tensors_only: drop non-tensor entries (training bookkeeping) instead of refusing them.

    Returns:
        The state dict on the CPU.

    Raises:
        WeightsNotFoundError: no such file. WeightsError: unreadable, pickled objects, not tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error types
            raise WeightsError(f"{path}: not a readable safetensors file: {err}") from err
    else:
        obj = _torch_load(path)
    if isinstance(obj, Mapping):
        for wrapper in wrappers:
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise WeightsError(
            f"{path}: expected a flat mapping of tensor names to tensors, got {type(obj).__name__}"
        )
    if tensors_only:
        return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{path}: entries that are not tensors: {names_preview(bad)}")
    return dict(obj)


# ------------------------------------------------------------------------------------------------
# model hub

_HUB_RE = re.compile(r"(?:hf://|hf-hub:|hf:)?([A-Za-z0-9][\w.-]*)/([\w.-]+)((?:/[\w.-]+)*)/?")


def parse_hub_id(
    s: str, default_subfolders: Mapping[str, str] | None = None
) -> tuple[str, str | None] | None:
    """``owner/name[/subfolder]`` (prefixed ``hf://``, ``hf-hub:`` or ``hf:`` or not) -> (repo_id, subfolder).

    None when ``s`` is not hub-like or names an existing local path. ``default_subfolders`` maps
    lower-case repo ids to the subfolder used when none is given.
    """
    text = str(s).strip()
    if text.startswith((".", "/", "~")) or Path(text).expanduser().exists():
        return None
    m = _HUB_RE.fullmatch(text)
    if not m:
        return None
    repo = f"{m[1]}/{m[2]}"
    sub = m[3].strip("/") or (default_subfolders or {}).get(repo.lower())
    return repo, sub


def is_hub_id(s: str) -> bool:
    """Whether ``s`` is a model-hub id rather than a local path."""
    return parse_hub_id(s) is not None


def _first_line(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def hub_file(
    repo_id: str,
    filenames: str | Sequence[str],
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    what: str = "weights",
    local_hint: str = "",
    gated: bool = False,
) -> Path:
    """The first of ``filenames`` found in hub repo ``repo_id`` (cache first, then download).

    Args:
        repo_id: ``owner/name``. filenames: one name or candidates in order (a missing file in a
            reachable repo tries the next; offline/gated/unknown repos fail at once).
        subfolder, revision, cache_dir: as ``huggingface_hub.hf_hub_download``.
        what: what is being fetched, for the message. local_hint: how to pass a local file instead.
        gated: the repo needs an accepted licence and a token (the message says how).

    Raises:
        WeightsNotFoundError: with the reason and what to do.
    """
    from huggingface_hub import hf_hub_download

    names = [filenames] if isinstance(filenames, str) else list(filenames)
    errors = []
    for filename in names:
        try:
            return Path(
                hf_hub_download(
                    repo_id, filename, subfolder=subfolder or None, revision=revision, cache_dir=cache_dir
                )
            )
        except Exception as err:  # noqa: BLE001 - offline, not cached, gated, missing file, no such repo ...
            errors.append(f"{filename}: {_first_line(err)}")
            if type(err).__name__ not in ("RemoteEntryNotFoundError", "EntryNotFoundError"):
                break
    where = f"{repo_id}{'/' + subfolder if subfolder else ''}"
    access = (
        f"'{repo_id}' is gated: request access on https://huggingface.co/{repo_id}, then log in "
        "(`huggingface-cli login` or set HF_TOKEN). "
        if gated
        else "For a gated repo, log in first (huggingface-cli login). "
    )
    offline = "set" if os.environ.get("HF_HUB_OFFLINE") else "not set"
    raise WeightsNotFoundError(
        f"could not get {what} from the Hugging Face hub repo {where} ({'; '.join(errors)}).\n"
        f"{access}Without network access (HF_HUB_OFFLINE is {offline}) download "
        f"{' or '.join(names)} from https://huggingface.co/{repo_id} on a machine that can reach it, "
        f"then pass the local path{': ' + local_hint if local_hint else '.'}"
    )
