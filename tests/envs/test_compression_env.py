from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

from edgecompress.envs import ENV_ID, CompressionEnv
from edgecompress.errors import ConfigError
from edgecompress.latency_models import estimate_latency
from edgecompress.search.objective import Objective


@pytest.fixture(scope="module")
def objective(tiny_fmnist_shared, train_tiny):
    model, data = train_tiny(tiny_fmnist_shared, "resnet20", epochs=1)
    return Objective(model, data.val, "raspberry-pi-4", input_shape=(1, 1, 28, 28))


def _env(objective, **kw) -> CompressionEnv:
    return CompressionEnv(objective=objective, **kw)


def test_env_checkers_pass_without_warnings(objective) -> None:
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = _env(objective, techniques=("keep", "sparsity", "wbits"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)
        sb3_check_env(_env(objective, techniques=("keep", "sparsity", "wbits")), warn=True)


def test_registered_id() -> None:
    assert ENV_ID in gym.registry


def test_action_mapping(objective) -> None:
    env = _env(objective, techniques=("keep", "rank", "sparsity", "wbits", "clusters", "abits"), budget_ratio=1.0)
    low = env._decode(np.full(6, -1.0, dtype=np.float32))
    high = env._decode(np.full(6, 1.0, dtype=np.float32))
    assert low == {"keep": 0.2, "rank": 0.2, "sparsity": 0.0, "wbits": 2, "clusters": 0, "abits": 8}
    assert high == {"keep": 1.0, "rank": 1.0, "sparsity": 0.9, "wbits": 32, "clusters": 256, "abits": 32}
    assert env.observation_space.shape == (16,) and env.action_space.shape == (6,)


@pytest.mark.parametrize("ratio", [0.35, 0.5, 0.8])
def test_budget_holds_for_random_actions(objective, ratio) -> None:
    env = _env(objective, budget_ratio=ratio)
    rng = np.random.default_rng(int(ratio * 100))
    for _ in range(3):
        env.reset()
        done = False
        while not done:
            _, reward, done, _, info = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
        assert info["within_budget"] and info["latency_ms"] <= env.budget_ms
        from edgecompress.compressors import Policy, compress

        model, _ = compress(objective.model, Policy.from_dict(info["policy"]), input_shape=(1, 1, 28, 28))
        assert estimate_latency(model, (1, 1, 28, 28), "raspberry-pi-4").total_ms <= env.budget_ms + 1e-9
        assert reward == info["accuracy"]


def test_filled_episodes_use_the_budget_the_actions_leave(tiny_fmnist_shared, train_tiny) -> None:
    model, data = train_tiny(tiny_fmnist_shared, "resnet20", epochs=1)
    obj = Objective(model, data.val, "raspberry-pi-4", input_shape=(1, 1, 28, 28))
    lean = np.full(1, -1.0, dtype=np.float32)  # keep_min everywhere: far under a 0.7 budget
    infos = []
    for filling in (False, True):
        env = _env(obj, budget_ratio=0.7, fill_budget=filling)
        env.reset()
        done = False
        while not done:
            _, _, done, _, info = env.step(lean)
        infos.append(info)
    assert infos[0]["filled"] == 0 and infos[1]["filled"] > 0
    assert infos[0]["latency_ms"] < infos[1]["latency_ms"] <= infos[1]["budget_ms"]
    keeps = [[lp.get("keep", 1.0) for lp in i["policy"]["layers"].values()] for i in infos]
    assert all(b >= a for a, b in zip(*keeps, strict=True)) and sum(keeps[1]) > sum(keeps[0])


def test_same_actions_same_episode(objective) -> None:
    actions = np.random.default_rng(3).uniform(-1, 1, (22, 1)).astype(np.float32)
    results = []
    for _ in range(2):
        env = _env(objective, budget_ratio=0.6)
        obs, _ = env.reset(seed=7)
        trace = [obs]
        for a in actions:
            obs, reward, _done, _, info = env.step(a)
            trace.append(obs)
        results.append((np.stack(trace), reward, info["policy"]))
    assert np.array_equal(results[0][0], results[1][0]) and results[0][1:] == results[1][1:]


def test_latency_surrogate_is_exact_at_both_ends(objective) -> None:
    """The limiter's surrogate matches the estimator at keep 1 and at keep_min (a fixed non-layer share made it
    over-prune LeNet-5 and under-estimate ResNet-20's per-operator overhead)."""
    env = _env(objective, budget_ratio=0.9)
    lim = env.limiter
    assert lim.fixed_min_ms != lim.fixed_ms
    assert lim.estimate({}, set(), 0, 1.0, 1.0) == pytest.approx(env.base_ms)
    assert lim.estimate({}, set(), 0, lim.keep_min, lim.keep_min) == pytest.approx(env.min_ms)


def test_infeasible_budget_and_bad_settings(objective) -> None:
    with pytest.raises(ValueError, match="cannot be met: the strongest compression allowed reaches"):
        _env(objective, budget_ms=1e-6)
    with pytest.raises(ConfigError, match="unknown technique 'prune'. Valid techniques: "):
        _env(objective, techniques=("prune",))
    with pytest.raises(ConfigError, match="unknown technique 'sparsty'. Did you mean 'sparsity'?"):
        _env(objective, techniques=("keep", "sparsty"))
    with pytest.raises(ConfigError, match="reward 'accuracy' invalid; valid: acc, acc_log_latency"):
        _env(objective, reward="accuracy")


def test_gym_make_with_defaults(fmnist) -> None:
    with pytest.warns(UserWarning, match="no checkpoint given: lenet5 is scored with random weights"):
        env = gym.make(ENV_ID, val_samples=200, budget_ratio=0.7)  # 0.5 is below LeNet-5's floor at round_to 8
    base = env.unwrapped
    assert base.objective.device == "raspberry-pi-4" and base.budget_ms == pytest.approx(0.7 * base.base_ms)
    assert base.space.round_to == 8 and base.space.keep_min == 0.2
    obs, _ = env.reset(seed=0)
    assert obs.shape == (11,) and len(base.layers) == 5
    env.close()


def test_repair_removes_blocks_when_keep_min_is_not_enough(objective) -> None:
    # A budget below what keep_min everywhere reaches, above the strongest policy (every block removed):
    # the end repair must remove some blocks, not give up over budget nor jump to the strongest policy.
    keep_floor = _env(objective, techniques=("keep",), budget_ratio=0.9).min_ms
    drop_floor = _env(objective, techniques=("keep", "drop"), budget_ratio=0.9).min_ms
    budget = keep_floor - 0.25 * (keep_floor - drop_floor)
    env = _env(objective, techniques=("keep", "drop"), budget_ms=budget)
    env.reset()
    done = False
    while not done:  # ask for no pruning and no removal: only the repair can meet the budget
        _, _, done, _, info = env.step(np.array([1.0, -1.0], dtype=np.float32))
    blocks = objective.analysis.blocks()
    removed = [b for b, names in blocks.items() if info["policy"]["layers"][names[0]].get("drop")]
    assert info["repaired"] and info["within_budget"] and info["latency_ms"] <= budget
    assert 0 < len(removed) < len(blocks), removed


def test_drop_is_decided_per_block_and_counted_by_the_limiter(objective) -> None:
    env = _env(objective, techniques=("keep", "drop"), budget_ratio=0.6)
    blocks = objective.analysis.blocks()
    # The strongest compression removes every removable block.
    strongest = env.space.strongest()
    assert all(strongest.get(n).drop for names in blocks.values() for n in names)
    assert env.min_ms < _env(objective, techniques=("keep",), budget_ratio=0.6).min_ms
    env.reset()
    done, t = False, 0
    while not done:
        spec = env.layers[t]
        # Ask to drop at a block's first layer only for layers.1; ask the opposite at its later layers.
        first = spec.block and blocks[spec.block][0] == spec.name
        drop = 1.0 if (spec.block == "layers.1") == bool(first) else -1.0
        _, _, done, _, info = env.step(np.array([0.6, drop], dtype=np.float32))
        t += 1
    layers = info["policy"]["layers"]
    assert layers["layers.1.conv1"] == {"drop": True} and layers["layers.1.conv2"] == {"drop": True}
    assert not any(lp.get("drop") for name, lp in layers.items() if not name.startswith("layers.1."))
    assert info["within_budget"]
    # A removed block's layers count zero in the limiter's surrogate.
    saved = env.limiter.estimate({}, {"layers.1"}, 0, 1.0, 1.0)
    index = [s.index for s in env.layers if s.block == "layers.1"]
    assert index == [3, 4]
    assert env.limiter.estimate({}, set(), 0, 1.0, 1.0) - saved == pytest.approx(sum(env.limiter.layer_ms[index]))


def test_the_order_of_techniques_does_not_change_an_episode(objective) -> None:
    """drop is settled before keep is limited, whichever is listed first (a removed block costs nothing)."""
    n = len(objective.analysis.layers)
    # Wide keeps, so the limiter acts; every third layer asks to remove its block.
    actions = np.array([[0.9, 1.0 if i % 3 == 0 else -1.0] for i in range(n)], dtype=np.float32)
    chosen = []
    for order in (("keep", "drop"), ("drop", "keep")):
        env = _env(objective, techniques=order, budget_ratio=0.3)
        env.reset()
        done = False
        for a in actions:
            _, _, done, _, info = env.step(np.ascontiguousarray(a if order[0] == "keep" else a[::-1]))
        assert done
        chosen.append(([c["keep"] for c in env._chosen], dict(env._group_keep), info["policy"]["layers"]))
    assert chosen[0] == chosen[1]
