"""AMC's DDPG agent (He et al., ECCV 2018) as Stable-Baselines3's DDPG plus AMC's specifics.

What AMC adds to DDPG, and nothing else:

* actor and critic of two hidden layers of 300 units; discount 1 (the episode is one policy);
* ``warmup_episodes`` of uniformly random actions before the actor acts;
* exploration by a *truncated* normal around the actor's action, within [-1, 1], with
  ``sigma`` (0.5) multiplied by ``sigma_decay`` (0.95) after every post-warm-up episode;
* reward back-fill: transitions are held until the episode ends, then every one of them is
  stored with the episode's final reward minus a moving-average baseline (the baseline
  starts at the first episode's reward and moves by ``1 - baseline_decay`` towards each new one);
* training once per episode, as many gradient steps as the episode had transitions.

It is seeded (``seed``) and logs to TensorBoard (``tensorboard_log``).
:meth:`AMCDDPG.save_state` writes everything a resumed search needs to go on
exactly as an uninterrupted one (networks and optimizers, replay buffer, the
counters SB3 and AMC keep, the noise generator and the global random states
SB3 samples from) as one ``.npz`` of plain arrays plus a JSON record, replaced
atomically; :meth:`AMCDDPG.load_state` restores it into an agent built the way
a fresh run builds it, reading with ``allow_pickle=False``. SB3's own
``save`` / ``load`` (and ``save_replay_buffer``) are not used: their zip
unpickles its ``data`` entries (spaces, schedules, the policy class) with
cloudpickle, so a crafted file would run code when a run folder is resumed.
"""

from __future__ import annotations

import json
import os
import random
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import DDPG
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise

from edgecompress._io import replace_atomically

__all__ = ["AMCDDPG"]


class AMCDDPG(DDPG):
    def __init__(
        self,
        env: Any,
        *,
        policy: Any = "MlpPolicy",
        n_layers: int | None = None,
        warmup_episodes: int = 100,
        sigma: float = 0.5,
        sigma_decay: float = 0.95,
        baseline_decay: float = 0.95,
        learning_rate: float = 1e-4,
        buffer_size: int = 2000,
        batch_size: int = 64,
        tau: float = 0.01,
        seed: int | None = 0,
        tensorboard_log: str | None = None,
        verbose: int = 0,
        _init_setup_model: bool = True,
        **kwargs: Any,
    ) -> None:
        if n_layers is None:  # SB3's load() rebuilds without it; the saved value is restored afterwards
            n_layers = len(getattr(getattr(env, "unwrapped", env), "layers", [None]))
        self.n_layers = n_layers
        self.warmup_episodes = warmup_episodes
        self.sigma = sigma
        self.sigma_decay = sigma_decay
        self.baseline_decay = baseline_decay
        self.baseline: float | None = None
        self.episodes_done = 0
        self.episode_rewards: list[float] = []
        self._episode: list[tuple[Any, ...]] = []
        self._noise_rng = np.random.default_rng(seed)
        self.episode_end_hook: Any = None
        """Called as ``hook(final_reward, info)`` once an episode's transitions are stored (run logging)."""
        self.checkpoint_hook: Any = None
        """Called as ``hook()`` once the agent's state for an episode is complete: after the episode's
        gradient steps, or at its end when none follow (warm-up). What a resumable run saves there resumes to
        the same run as an uninterrupted one."""
        kwargs.setdefault("policy_kwargs", {"net_arch": [300, 300]})
        super().__init__(
            policy, env, learning_rate=learning_rate, buffer_size=buffer_size,
            learning_starts=warmup_episodes * n_layers, batch_size=batch_size, tau=tau, gamma=1.0,
            train_freq=(1, "episode"), gradient_steps=-1, action_noise=None, seed=seed,
            tensorboard_log=tensorboard_log, verbose=verbose, _init_setup_model=_init_setup_model, **kwargs,
        )  # fmt: skip

    def _sample_action(
        self, learning_starts: int, action_noise: ActionNoise | None = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.episodes_done < self.warmup_episodes:
            scaled = self._noise_rng.uniform(-1.0, 1.0, (n_envs, *self.action_space.shape))  # type: ignore[misc]
        else:
            assert self._last_obs is not None
            action, _ = self.predict(self._last_obs, deterministic=True)
            scaled = self._truncated_normal(self.policy.scale_action(action), self.sigma)
        scaled = scaled.astype(np.float32)
        return self.policy.unscale_action(scaled), scaled

    def _truncated_normal(self, mean: np.ndarray, sigma: float) -> np.ndarray:
        """Normal samples around ``mean``, redrawn until inside [-1, 1] (at most 100 rounds, then clipped)."""
        out = self._noise_rng.normal(mean, sigma)
        for _ in range(100):
            bad = (out < -1) | (out > 1)
            if not bad.any():
                break
            out[bad] = self._noise_rng.normal(mean[bad], sigma)
        return np.clip(out, -1.0, 1.0)

    def _store_transition(
        self,
        replay_buffer: ReplayBuffer,
        buffer_action: np.ndarray,
        new_obs: Any,
        reward: np.ndarray,
        dones: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        if self._vec_normalize_env is not None:
            raise ValueError(
                "AMCDDPG does not support VecNormalize: the environment's observations are already in [0, 1]"
            )
        next_obs = deepcopy(new_obs)
        if dones[0] and infos[0].get("terminal_observation") is not None:
            next_obs[0] = infos[0]["terminal_observation"]
        self._episode.append((deepcopy(self._last_obs), next_obs, buffer_action.copy(), dones.copy(), infos))
        self._last_obs = new_obs
        self._last_original_obs = new_obs
        if not dones[0]:
            return
        final = float(reward[0])
        if self.baseline is None:
            self.baseline = final
        advantage = final - self.baseline
        self.baseline += (1.0 - self.baseline_decay) * (final - self.baseline)
        for obs, nxt, action, done, info in self._episode:
            replay_buffer.add(obs, nxt, action, np.array([advantage], dtype=np.float32), done, info)
        self._episode = []
        self.episode_rewards.append(final)
        self.episodes_done += 1
        if self.episodes_done > self.warmup_episodes:
            self.sigma *= self.sigma_decay
        if self.episode_end_hook is not None:
            self.episode_end_hook(final, infos[0])
        # SB3 trains after the rollout iff num_timesteps > learning_starts; otherwise the state is final now.
        if self.checkpoint_hook is not None and not self.num_timesteps > self.learning_starts:
            self.checkpoint_hook()
        self.logger.record("amc/final_reward", final)
        self.logger.record("amc/baseline", self.baseline)
        self.logger.record("amc/sigma", self.sigma)

    BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
    STATE_FORMAT = "edgecompress.amc-state"
    STATE_VERSION = 1

    def _shape(self) -> dict[str, Any]:
        """What a saved state must match to be restored into this agent."""
        assert self.observation_space.shape is not None and self.action_space.shape is not None
        return {
            "n_layers": self.n_layers, "warmup_episodes": self.warmup_episodes, "sigma_decay": self.sigma_decay,
            "baseline_decay": self.baseline_decay, "buffer_size": self.buffer_size, "batch_size": self.batch_size,
            "tau": self.tau, "observation_shape": list(self.observation_space.shape),
            "action_shape": list(self.action_space.shape),
        }  # fmt: skip

    def save_state(self, path: str | os.PathLike[str], *, meta: dict[str, Any] | None = None) -> Path:
        """Write the whole learning state to one ``.npz`` (no pickled object), atomically: a kill leaves the
        previous state or this one, never a mix. ``meta`` (JSON) is stored with it and returned by
        :meth:`load_state`. Call it at an episode boundary (``checkpoint_hook``)."""
        assert self.replay_buffer is not None
        buffer = self.replay_buffer
        arrays: dict[str, np.ndarray] = {}
        state = {
            "format": self.STATE_FORMAT, "version": self.STATE_VERSION, "shape": self._shape(), "meta": meta or {},
            "parameters": _flatten(self.get_parameters(), arrays),
            "buffer": {"pos": int(buffer.pos), "full": bool(buffer.full)},
            "sb3": {"num_timesteps": self.num_timesteps, "n_updates": self._n_updates,
                    "progress_remaining": self._current_progress_remaining},
            "amc": {"episodes_done": self.episodes_done, "episode_rewards": self.episode_rewards,
                    "baseline": self.baseline, "sigma": self.sigma, "noise_rng": self._noise_rng.bit_generator.state},
        }  # fmt: skip
        arrays.update({f"buffer.{name}": getattr(buffer, name) for name in self.BUFFER_ARRAYS})
        arrays.update({f"rng.{k}": v for k, v in _global_rng_state().items()})

        def write(tmp: Path) -> None:
            with tmp.open("wb") as f:
                np.savez(f, state=np.array(json.dumps(state)), **arrays)  # type: ignore[arg-type]
                f.flush()
                os.fsync(f.fileno())

        return replace_atomically(path, write)

    @classmethod
    def saved_shape(cls, path: str | os.PathLike[str]) -> dict[str, Any]:
        """The set-up a saved state was made for (what :meth:`load_state` checks), or ``{}`` when ``path`` is not
        a readable state: lets a caller build the agent a resumed run needs (say, its warm-up) before loading."""
        try:
            with np.load(path, allow_pickle=False) as data:
                state = json.loads(str(data["state"][()]))
            shape = state["shape"]
        except Exception:  # not a state, or damaged: load_state says which
            return {}
        return dict(shape) if isinstance(shape, dict) else {}

    def load_state(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Restore what :meth:`save_state` wrote into this agent (built as a fresh run builds it) and return the
        ``meta`` saved with it. A file that is not such a state, or one saved for another set-up, raises
        ``ValueError`` saying why (the file is read and checked first, but the networks may be half set by then:
        build a new agent)."""
        assert self.replay_buffer is not None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except Exception as exc:  # numpy raises several types for a file that is not an .npz
            raise ValueError(f"not a saved agent state ({type(exc).__name__}: {exc})") from None
        try:
            state = json.loads(str(arrays.pop("state")[()]))
            if (state.get("format"), state.get("version")) != (self.STATE_FORMAT, self.STATE_VERSION):
                raise ValueError(f"format {state.get('format')!r} version {state.get('version')!r}")
            changed = sorted(k for k, v in self._shape().items() if state["shape"].get(k) != v)
            if changed:
                raise ValueError(f"saved for another set-up ({', '.join(changed)} differ)")
            params = _unflatten(state["parameters"], arrays)
            buffer = {name: arrays[f"buffer.{name}"] for name in self.BUFFER_ARRAYS}
            for name, saved in buffer.items():
                current = getattr(self.replay_buffer, name)
                if saved.shape != current.shape or saved.dtype != current.dtype:
                    raise ValueError(f"replay buffer {name} is {saved.dtype}{saved.shape}, not {current.shape}")
            set_rng = _global_rng_setter({k.removeprefix("rng."): v for k, v in arrays.items() if k.startswith("rng.")})
            sb3, amc = state["sb3"], state["amc"]
            noise_rng = np.random.default_rng()
            noise_rng.bit_generator.state = amc["noise_rng"]
            self.set_parameters(params, exact_match=True, device=self.device)
        except (KeyError, IndexError, AttributeError, TypeError, ValueError, RuntimeError) as exc:
            if str(exc).startswith("saved for another set-up"):
                raise  # intact, only not this agent's: said as such, not as damage
            raise ValueError(f"a damaged agent state ({type(exc).__name__}: {exc})") from None
        for name, saved in buffer.items():
            getattr(self.replay_buffer, name)[...] = saved
        self.replay_buffer.pos = int(state["buffer"]["pos"])
        self.replay_buffer.full = bool(state["buffer"]["full"])
        self.num_timesteps = int(sb3["num_timesteps"])
        self._n_updates, self._current_progress_remaining = int(sb3["n_updates"]), float(sb3["progress_remaining"])
        self.episodes_done, self.episode_rewards = int(amc["episodes_done"]), [float(r) for r in amc["episode_rewards"]]
        self._episode_num = self.episodes_done  # SB3 counts an episode after its last transition is stored
        self.baseline, self.sigma, self._noise_rng = amc["baseline"], float(amc["sigma"]), noise_rng
        self._episode = []
        self._last_obs = None  # type: ignore[assignment]  # at an episode boundary: learn() resets the env
        set_rng()
        return dict(state["meta"])

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        super().train(gradient_steps, batch_size)
        if self.checkpoint_hook is not None:
            self.checkpoint_hook()

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_episode", "episode_end_hook", "checkpoint_hook"]


def _flatten(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    """``obj`` (state dicts: nested dicts, lists, tuples, numbers, strings, tensors) as JSON, each tensor moved
    to ``arrays`` under a key of its own; :func:`_unflatten` inverts it."""
    if isinstance(obj, torch.Tensor):
        key = f"param.{len(arrays)}"
        arrays[key] = obj.detach().cpu().numpy()
        return {"tensor": key}
    if isinstance(obj, dict):
        return {"dict": [[_flatten(k, arrays), _flatten(v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, tuple | list):
        return {"tuple" if isinstance(obj, tuple) else "list": [_flatten(v, arrays) for v in obj]}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in an agent state")


def _unflatten(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    if not isinstance(obj, dict):
        return obj
    if "tensor" in obj:
        return torch.from_numpy(np.array(arrays[obj["tensor"]]))
    if "dict" in obj:
        return {_unflatten(k, arrays): _unflatten(v, arrays) for k, v in obj["dict"]}
    if "tuple" in obj:
        return tuple(_unflatten(v, arrays) for v in obj["tuple"])
    return [_unflatten(v, arrays) for v in obj["list"]]


def _global_rng_state() -> dict[str, np.ndarray]:
    """Python's, NumPy's and torch's global random states (SB3 samples its replay buffer and target noise from
    them) as plain arrays."""
    _, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    version, py_state, py_gauss = random.getstate()
    out = {
        "np_keys": np.asarray(keys), "np_meta": np.array([pos, has_gauss], dtype=np.int64),
        "np_gauss": np.array([cached]), "torch": torch.get_rng_state().numpy(),
        "py_state": np.array(py_state, dtype=np.int64),
        "py_meta": np.array([version, np.nan if py_gauss is None else py_gauss]),
    }  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.stack(torch.cuda.get_rng_state_all()).numpy()
    return out


def _global_rng_setter(d: dict[str, np.ndarray]) -> Any:
    """A function that sets the global random states :func:`_global_rng_state` returned (parsed now, so a
    damaged one fails before anything changes)."""
    pos, has_gauss = (int(v) for v in d["np_meta"])
    np_state = ("MT19937", d["np_keys"].astype(np.uint32), pos, has_gauss, float(d["np_gauss"][0]))
    torch_state = torch.from_numpy(d["torch"].astype(np.uint8))
    version, gauss = d["py_meta"]
    py_state = (int(version), tuple(int(v) for v in d["py_state"]), None if np.isnan(gauss) else float(gauss))
    cuda = None
    if "cuda" in d and torch.cuda.is_available() and len(d["cuda"]) == torch.cuda.device_count():
        cuda = list(torch.from_numpy(d["cuda"].astype(np.uint8)))

    def apply() -> None:
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        random.setstate(py_state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)

    return apply
