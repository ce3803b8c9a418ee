"""`Policy`: load an exported model folder and predict an action chunk from one observation."""

from __future__ import annotations

import math
import numbers
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuracore.ml.core import batch as keys
from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.errors import ConfigError, one_line
from neuracore.ml.core.model import NeuracoreModel
from neuracore.ml.core.relative_actions import to_absolute
from neuracore.ml.export.model_folder import load_model_folder, recover_export
from neuracore.ml.export.temporal_ensemble import TemporalEnsembler


def inference_device(device: str | torch.device) -> torch.device:
    """`device` as a torch device that exists on this machine, or a one-line `ConfigError`."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"device={str(device)!r}: not a torch device ({one_line(exc, 120)}); use cpu or cuda") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"device={str(device)!r}: no such CUDA device on this machine "
                          f"({torch.cuda.device_count()} visible); use cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={str(device)!r}: MPS is not available on this machine; use cpu")
    return dev


class Policy:
    """Inference wrapper around an exported model.

    `predict(observation)` takes one time step: for each input DataType either an array in the
    model's item order or a mapping item name → value; images as `[H, W, C]` uint8 per camera;
    an optional `"LANGUAGE"` string. It returns `{DataType value: [horizon, D] numpy array}`
    in the units of the training data, always absolute (a model trained with `relative_actions`
    predicts deltas, turned back into targets here by adding the observed state). Observation
    history is kept between calls; `reset()` it at the start of an episode.

    `select_action(observation)` is the per-step form for control loops: it executes the first
    `n_action_steps` (default: the whole horizon) actions of each predicted chunk, or, with
    `temporal_ensemble_coeff` (default: the model's own, e.g. ACT's `algorithm.temporal_ensemble_coeff`,
    when neither argument is given), queries the model every step and returns the temporally
    ensembled action.

    `robot` (a model trained on several datasets, `dataset_name=[a,b]`): serve that robot of the
    training data. Observations then hold only its items (named as in its dataset, or as the model
    names them, e.g. `<robot>/<item>` with `dataset.statistics=per_robot`); the others are zero and
    masked as in training, and predictions hold only its output items (`output_items`).
    """

    def __init__(
        self,
        model: NeuracoreModel,
        config: dict[str, Any],
        device: str | torch.device = "cpu",
        n_action_steps: int | None = None,
        temporal_ensemble_coeff: float | None = None,
        robot: str | None = None,
    ) -> None:
        self.device = inference_device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.description = model.model_init_description
        self.history = max(int(model.observation_history), 1)
        self._frames: deque[dict[str, np.ndarray]] = deque(maxlen=self.history)
        horizon = int(self.description.output_prediction_horizon)
        if temporal_ensemble_coeff is None and n_action_steps is None:  # the model's own rollout setting
            temporal_ensemble_coeff = getattr(model, "temporal_ensemble_coeff", None)  # (ACT's yaml key)
        if temporal_ensemble_coeff is not None and not (
            isinstance(temporal_ensemble_coeff, numbers.Real) and not isinstance(temporal_ensemble_coeff, bool)
            and math.isfinite(temporal_ensemble_coeff)
            and temporal_ensemble_coeff >= 0
        ):
            raise ConfigError(f"temporal_ensemble_coeff={temporal_ensemble_coeff!r}: must be a finite number >= 0")
        if temporal_ensemble_coeff is not None and n_action_steps not in (None, 1):
            raise ConfigError(
                f"n_action_steps={n_action_steps}: temporal ensembling queries the model every step; "
                "use n_action_steps=1 (or None) with temporal_ensemble_coeff"
            )
        self.n_action_steps = (
            1 if temporal_ensemble_coeff is not None else horizon if n_action_steps is None else int(n_action_steps)
        )
        if not 1 <= self.n_action_steps <= horizon:
            raise ConfigError(f"n_action_steps={n_action_steps}: must be in 1..{horizon} (the predicted horizon)")
        self.temporal_ensemble_coeff = temporal_ensemble_coeff
        self._ensembler = (
            TemporalEnsembler(float(temporal_ensemble_coeff), horizon) if temporal_ensemble_coeff is not None else None
        )
        self._queue: deque[dict[str, np.ndarray]] = deque()
        self.robot = robot
        self._own: dict[str, list[int]] = {}  # DataType value -> positions of the robot's items in the model's
        if robot is not None:
            robots = (config.get("dataset") or {}).get("robot_items") or {}
            if robot not in robots:
                raise ConfigError(f"robot={robot!r}: not a robot of this model's training data; robots: "
                                  f"{', '.join(robots) or 'none recorded (a single-dataset model: leave robot unset)'}")
            for dt, f in [*self.description.inputs.items(), *self.description.outputs.items()]:
                have = set(robots[robot].get(dt.value, []))
                self._own[dt.value] = [p for p, item in enumerate(f.items) if item in have]

    def _own_items(self, dt: DataType, items: list[str]) -> list[str]:
        return [items[p] for p in self._own.get(dt.value, [])]

    def _short(self, item: str) -> str:
        return item.removeprefix(f"{self.robot}/") if self.robot is not None else item

    def _scatter(self, dt: DataType, feature: Any, value: Any) -> np.ndarray:
        """A robot's own items (a mapping by either name, or an array in model order) in the model's full layout."""
        own = self._own_items(dt, list(feature.items))
        width = feature.shape[0] if dt.modality == Modality.VECTOR else 1
        if isinstance(value, Mapping):
            missing = [self._short(i) for i in own if i not in value and self._short(i) not in value]
            if missing:
                raise ConfigError(f"observation[{dt.value}]: missing items {', '.join(missing)} of robot {self.robot!r}")
            parts = [np.asarray(value[i] if i in value else value[self._short(i)]) for i in own]
        else:
            arr = np.asarray(value)
            if dt.modality == Modality.VECTOR:
                arr = arr.astype(np.float32).reshape(-1)
                if arr.shape[0] != len(own) * width:
                    raise ConfigError(f"observation[{dt.value}]: {arr.shape[0]} values, expected {len(own) * width} "
                                      f"(robot {self.robot!r}: {', '.join(map(self._short, own))})")
                parts = list(arr.reshape(len(own), width))
            else:
                if arr.ndim != 4 or arr.shape[0] != len(own):
                    raise ConfigError(f"observation[{dt.value}]: shape {list(arr.shape)}, expected "
                                      f"[{len(own)}, H, W, C] (robot {self.robot!r}: {', '.join(map(self._short, own))})")
                parts = list(arr)
        if dt.modality == Modality.VECTOR:
            full = np.zeros((len(feature.items), width), np.float32)
            for p, part in zip(self._own[dt.value], parts):
                full[p] = np.atleast_1d(np.asarray(part, np.float32)).reshape(width)
            return full.reshape(-1)
        c, h, w = feature.shape
        full_img = np.zeros((len(feature.items), h, w, c), np.uint8)
        for p, part in zip(self._own[dt.value], parts):
            if np.shape(part) != (h, w, c):
                raise ConfigError(f"observation[{dt.value}]: camera {self._short(feature.items[p])!r} has shape "
                                  f"{list(np.shape(part))}, expected {[h, w, c]}")
            full_img[p] = part
        return full_img

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        trusted_algorithms: dict[str, type[NeuracoreModel]] | None = None,
        storage_url: str | None = None,
        **rollout: Any,
    ) -> Policy:
        """Load an exported folder, or `org/name[@revision]` from Neuracore storage (never unpickles).

        A path that exists locally (`<run>/model`, `<run>/best_model`, any export) is loaded as is.
        Otherwise `org/name` (branch main), `org/name@best`, `org/name@<tag>` or `org/name@<revision>`
        is pulled from `storage_url` (default `$NEURACORE_STORAGE_URL`, else
        `file://$NEURACORE_HOME/storage`) into `$NEURACORE_HOME/cache/hub` once, every sha256 verified.
        `n_action_steps` / `temporal_ensemble_coeff` configure `select_action` (see the class).
        """
        folder = Path(path).expanduser()
        recover_export(folder)  # an export replace killed halfway: the previous export is put back
        if not folder.exists():
            from neuracore.ml.storage import looks_like_repo, pull_model

            if looks_like_repo(str(path)):  # otherwise the loader names the missing local folder
                folder = pull_model(str(path), storage_url)
        model, config = load_model_folder(folder, trusted_algorithms)
        return cls(model, config, device, **rollout)

    @property
    def output_items(self) -> dict[str, list[str]]:
        """Item names of each output DataType, in the order of the predicted vectors (with `robot`: its own)."""
        if self.robot is not None:
            return {dt.value: [self._short(i) for i in self._own_items(dt, list(f.items))]
                    for dt, f in self.description.outputs.items()}
        return {dt.value: list(f.items) for dt, f in self.description.outputs.items()}

    def reset(self) -> None:
        """Forget the observation history and pending actions (call at the start of every episode)."""
        self._frames.clear()
        self._queue.clear()
        if self._ensembler is not None:
            self._ensembler.reset()

    def select_action(self, observation: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """One action `{DataType value: [D]}` to execute now, for control loops that run every step.

        Without ensembling, a chunk is predicted when the queue is empty and its first
        `n_action_steps` actions are executed one per call. With `temporal_ensemble_coeff`, the
        model is queried every call and the action is the exponentially weighted mean of every
        prediction made so far for this step (ACT's temporal ensembling).
        """
        if self._ensembler is not None:
            chunk = self.predict(observation)
            names = list(chunk)
            widths = [chunk[n].shape[-1] for n in names]
            stacked = torch.from_numpy(np.concatenate([chunk[n] for n in names], axis=-1))
            action = self._ensembler.update(stacked).numpy()
            parts = np.split(action, np.cumsum(widths)[:-1])
            return dict(zip(names, parts, strict=True))
        if not self._queue:
            chunk = self.predict(observation)
            for i in range(self.n_action_steps):
                self._queue.append({name: value[i] for name, value in chunk.items()})
        else:
            self._remember(observation)  # the history still advances on steps without a prediction
        return self._queue.popleft()

    def _frame(self, observation: Mapping[str, Any]) -> dict[str, np.ndarray]:
        frame: dict[str, np.ndarray] = {}
        for dt, feature in self.description.inputs.items():
            if dt.modality == Modality.LANGUAGE:
                continue
            if dt.value not in observation:
                raise ConfigError(f"observation: missing {dt.value} (expects items {', '.join(feature.items)})")
            value = observation[dt.value]
            if self.robot is not None:
                full = self._scatter(dt, feature, value)
                frame[dt.value] = full if dt.modality == Modality.VECTOR else full.transpose(0, 3, 1, 2)
                continue
            if dt.modality == Modality.VECTOR:
                if isinstance(value, Mapping):
                    missing = [i for i in feature.items if i not in value]
                    if missing:
                        raise ConfigError(f"observation[{dt.value}]: missing items {', '.join(missing)}")
                    value = np.concatenate([np.atleast_1d(np.asarray(value[i], np.float32)) for i in feature.items])
                value = np.asarray(value, np.float32).reshape(-1)
                if value.shape[0] != feature.dim:
                    raise ConfigError(f"observation[{dt.value}]: {value.shape[0]} values, expected {feature.dim}")
            else:
                if isinstance(value, Mapping):
                    missing = [c for c in feature.items if c not in value]
                    if missing:
                        raise ConfigError(f"observation[{dt.value}]: missing cameras {', '.join(missing)}")
                    value = np.stack([np.asarray(value[c]) for c in feature.items])
                value = np.asarray(value)
                c, h, w = feature.shape
                if value.shape != (len(feature.items), h, w, c):
                    raise ConfigError(
                        f"observation[{dt.value}]: shape {list(value.shape)}, expected "
                        f"{[len(feature.items), h, w, c]} ([cameras, H, W, C])"
                    )
                value = value.transpose(0, 3, 1, 2)
            frame[dt.value] = value
        return frame

    def _remember(self, observation: Mapping[str, Any]) -> None:
        frame = self._frame(observation)
        self._frames.append(frame)
        while len(self._frames) < self.history:  # pad history with the first frame, as in training
            self._frames.appendleft(frame)

    @torch.no_grad()
    def predict(self, observation: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Action chunk(s) `[horizon, D]` for one observation."""
        self._remember(observation)
        batch: dict[str, Any] = {keys.INPUTS: {}, keys.INPUT_MASKS: {}}
        for dt, feature in self.description.inputs.items():
            if dt.modality == Modality.LANGUAGE:
                continue
            # Contiguous, like training batches: a strided layout changes conv kernels' rounding.
            stacked = np.ascontiguousarray(np.stack([f[dt.value] for f in self._frames])[None])
            batch[keys.INPUTS][dt.value] = torch.as_tensor(stacked, device=self.device)
            width = feature.dim if dt.modality == Modality.VECTOR else len(feature.items)
            mask = torch.ones(1, width, device=self.device)
            if self.robot is not None:  # the items this robot lacks are masked, as they were in training
                per_item = torch.zeros(len(feature.items))
                per_item[self._own.get(dt.value, [])] = 1.0
                mask = per_item.repeat_interleave(width // max(len(feature.items), 1))[None].to(self.device)
            batch[keys.INPUT_MASKS][dt.value] = mask
        if DataType.LANGUAGE in self.description.inputs:
            batch[keys.LANGUAGE] = [str(observation.get("LANGUAGE") or self.description.default_language or "")]
        out = {k: v.float() for k, v in self.model.predict(batch).items()}
        # A model trained with relative_actions predicts deltas: absolute targets from here on, for every caller.
        out = to_absolute(out, batch[keys.INPUTS], self.description.relative_actions)
        result = {k: v[0].cpu().numpy() for k, v in out.items()}
        if self.robot is not None:  # only the robot's own output items, in model order
            for dt, f in self.description.outputs.items():
                if dt.value in result and f.shape:
                    width = f.dim // max(len(f.items), 1)
                    cols = [p * width + k for p in self._own.get(dt.value, []) for k in range(width)]
                    result[dt.value] = result[dt.value][..., cols]
        return result
