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

It is seeded (``seed``), logs to TensorBoard (``tensorboard_log``), and saves and
restores with SB3's ``save`` / ``load`` (the AMC state above is saved with the
model). The replay buffer is saved as plain arrays (:meth:`AMCDDPG.save_buffer`,
an ``.npz`` read with ``allow_pickle=False``), not with SB3's pickle-based
``save_replay_buffer``: a run folder someone hands you must not run code
when it is resumed.
"""

from __future__ import annotations

import os
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3 import DDPG
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise

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

    def save_buffer(self, path: str | os.PathLike[str]) -> Path:
        """Write the replay buffer's arrays and position as ``.npz`` (atomically; no pickled objects)."""
        buffer = self.replay_buffer
        assert buffer is not None
        arrays = {name: getattr(buffer, name) for name in self.BUFFER_ARRAYS}
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as f:
            np.savez(f, pos=np.array(buffer.pos), full=np.array(buffer.full), **arrays)
        os.replace(tmp, path)
        return path

    def load_buffer(self, path: str | os.PathLike[str]) -> None:
        """Restore the replay buffer written by :meth:`save_buffer` (``allow_pickle=False``; shapes checked)."""
        buffer = self.replay_buffer
        assert buffer is not None
        with np.load(path, allow_pickle=False) as data:
            for name in self.BUFFER_ARRAYS:
                current = getattr(buffer, name)
                if name not in data or data[name].shape != current.shape or data[name].dtype != current.dtype:
                    raise ValueError(f"{path}: {name} does not match this agent's replay buffer {current.shape}")
                current[...] = data[name]
            buffer.pos = int(data["pos"])
            buffer.full = bool(data["full"])

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        super().train(gradient_steps, batch_size)
        if self.checkpoint_hook is not None:
            self.checkpoint_hook()

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_episode", "episode_end_hook", "checkpoint_hook"]
