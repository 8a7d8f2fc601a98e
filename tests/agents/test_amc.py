from __future__ import annotations

import numpy as np
import pytest
import torch

from edgecompress.agents import AMCDDPG
from edgecompress.envs import CompressionEnv
from edgecompress.search.objective import Objective


@pytest.fixture(scope="module")
def objective(tiny_fmnist_shared, train_tiny):
    model, data = train_tiny(tiny_fmnist_shared, "lenet5", epochs=3)
    return Objective(model, data.val, "raspberry-pi-4", input_shape=(1, 1, 28, 28))


def _agent(objective, seed: int = 0, warmup: int = 2) -> AMCDDPG:
    env = CompressionEnv(objective=objective, budget_ratio=0.8)
    return AMCDDPG(env, n_layers=len(env.layers), warmup_episodes=warmup, seed=seed)


def test_backfill_gives_every_transition_the_episode_advantage(objective) -> None:
    agent = _agent(objective, warmup=10)
    agent.learn(total_timesteps=5 * 3)  # three episodes of 5 layers
    rewards = agent.episode_rewards
    assert len(rewards) == 3 and agent.episodes_done == 3
    stored = agent.replay_buffer.rewards[: agent.replay_buffer.size()].flatten()
    assert stored.shape == (15,)
    b = rewards[0]
    expected = []
    for r in rewards:
        expected += [r - b] * 5
        b += 0.05 * (r - b)
    assert np.allclose(stored, expected, atol=1e-6)
    assert agent.gamma == 1.0 and agent.sigma == 0.5  # still warming up: no decay yet


def test_noise_decays_after_warmup_and_actions_stay_in_bounds(objective) -> None:
    agent = _agent(objective, warmup=1)
    agent.learn(total_timesteps=5 * 4)
    assert agent.sigma == pytest.approx(0.5 * 0.95**3)
    actions = agent.replay_buffer.actions[: agent.replay_buffer.size()]
    assert actions.min() >= -1 and actions.max() <= 1
    draws = agent._truncated_normal(np.full(2000, 0.9), 0.5)
    assert draws.min() >= -1 and draws.max() <= 1 and (draws > 0.9).mean() < 0.5


def test_same_seed_same_search(objective) -> None:
    runs = []
    for _ in range(2):
        agent = _agent(objective, seed=5, warmup=2)
        agent.learn(total_timesteps=5 * 4)
        runs.append((agent.episode_rewards, agent.replay_buffer.actions[:20].copy()))
    assert runs[0][0] == runs[1][0] and np.array_equal(runs[0][1], runs[1][1])


def test_save_and_resume_keeps_amc_state(objective, tmp_path) -> None:
    agent = _agent(objective, warmup=1)
    agent.learn(total_timesteps=5 * 3)
    agent.save_state(tmp_path / "state.npz", meta={"logged": 3})
    with np.load(tmp_path / "state.npz", allow_pickle=False) as data:  # plain arrays: nothing to unpickle
        assert {f"buffer.{name}" for name in AMCDDPG.BUFFER_ARRAYS} <= set(data.files)
    assert not list(tmp_path.glob("*.tmp"))
    loaded = _agent(objective, warmup=1, seed=7)  # built as a fresh run builds it, then restored
    assert loaded.load_state(tmp_path / "state.npz") == {"logged": 3}
    assert loaded.episodes_done == 3 and loaded.sigma == pytest.approx(agent.sigma)
    assert loaded.baseline == pytest.approx(agent.baseline) and loaded.replay_buffer.size() == 15
    assert loaded.num_timesteps == 15 and loaded._n_updates == agent._n_updates
    for name in AMCDDPG.BUFFER_ARRAYS:
        assert np.array_equal(getattr(loaded.replay_buffer, name), getattr(agent.replay_buffer, name))
    for name, params in agent.get_parameters()["policy"].items():
        assert torch.equal(params, loaded.get_parameters()["policy"][name]), name
    assert loaded._noise_rng.bit_generator.state == agent._noise_rng.bit_generator.state
    loaded.learn(total_timesteps=5 * 2, reset_num_timesteps=False)
    assert loaded.episodes_done == 5


@pytest.mark.parametrize("change", ["warmup", "buffer"])
def test_a_state_saved_for_another_set_up_is_refused(objective, tmp_path, change) -> None:
    agent = _agent(objective, warmup=1)
    agent.learn(total_timesteps=5)
    agent.save_state(tmp_path / "state.npz")
    env = CompressionEnv(objective=objective, budget_ratio=0.8)
    other = AMCDDPG(env, n_layers=5, warmup_episodes=3 if change == "warmup" else 1,
                    buffer_size=100 if change == "buffer" else 2000)  # fmt: skip
    with pytest.raises(ValueError, match="saved for another set-up"):
        other.load_state(tmp_path / "state.npz")


def test_sb3_private_methods_amc_overrides_keep_their_signatures() -> None:
    """AMCDDPG overrides two private methods of SB3's OffPolicyAlgorithm (the truncated-normal noise needs the
    actor's action, the back-fill the whole episode); pyproject caps stable-baselines3 below 3. This fails
    first when SB3 changes them."""
    import inspect

    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

    def params(f):  # type: ignore[no-untyped-def]
        return list(inspect.signature(f).parameters)

    assert params(OffPolicyAlgorithm._sample_action) == ["self", "learning_starts", "action_noise", "n_envs"]
    assert params(OffPolicyAlgorithm._store_transition) == [
        "self", "replay_buffer", "buffer_action", "new_obs", "reward", "dones", "infos",
    ]  # fmt: skip
    assert params(AMCDDPG._sample_action) == params(OffPolicyAlgorithm._sample_action)
    assert params(AMCDDPG._store_transition) == params(OffPolicyAlgorithm._store_transition)
