"""MANN: least-recently-used writes, content reads, label timing, sequences, learning."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fewshot.config import TrainConfig
from fewshot.data import EpisodeSampler, from_arrays
from fewshot.errors import ConfigError
from fewshot.evaluate import evaluate
from fewshot.methods import MANN, build_method
from fewshot.methods.mann import LRUAMemory, MemoryState, instance_accuracy, sequence_order
from fewshot.models import MLP
from fewshot.train import Trainer

from core_fixtures import digits8  # noqa: F401  (fixture)


def clusters(seed: int = 0):
    """80 well-separated classes of 10 examples: 64 to train on, 16 novel ones to test."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(80, 10, generator=g) * 3
    y = torch.arange(80).repeat_interleave(10)
    x = centers[y] + 0.5 * torch.randn(len(y), 10, generator=g)
    return from_arrays(x, y, splits={"train": list(range(64)), "test": list(range(64, 80))})


def small_mann(way: int = 3, **options) -> MANN:
    torch.manual_seed(0)
    defaults = dict(controller_size=32, memory_slots=16, memory_size=16, reads=1, encoder="backbone")
    return build_method("mann", torch.nn.Flatten(), image_shape=(10, 1, 1), way=way, **{**defaults, **options})


def test_write_goes_to_the_least_used_slot_after_erasing_it():
    memory = LRUAMemory(controller_size=4, slots=6, size=3, reads=1)
    old = torch.arange(18.0).view(1, 6, 3) + 1
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.3, 0.7, 0.2]])  # slot 1 is least used
    previous_read = F.one_hot(torch.tensor([[4]]), 6).float()  # the last read looked at slot 4
    state = MemoryState(old, usage, previous_read)
    add = torch.tensor([[[1.0, -2.0, 3.0]]])
    # Gate closed (σ(α) ≈ 0): everything goes to the least used slot, which was erased first.
    new, weights = memory.write(state, add, torch.tensor([[-30.0]]))
    assert torch.allclose(weights, F.one_hot(torch.tensor([[1]]), 6).float(), atol=1e-6)
    assert torch.allclose(new[0, 1], add[0, 0], atol=1e-5)
    keep = [0, 2, 3, 4, 5]
    assert torch.allclose(new[0, keep], old[0, keep], atol=1e-5)
    # Gate open (σ(α) ≈ 1): the write goes to the slot read last; the least used one is still erased.
    new, _ = memory.write(state, add, torch.tensor([[30.0]]))
    assert torch.allclose(new[0, 4], old[0, 4] + add[0, 0], atol=1e-5)
    assert torch.allclose(new[0, 1], torch.zeros(3))


def steered_memory(write: str, gamma: float = 0.5) -> LRUAMemory:
    """One read head over 4 slots of size 4 whose controller outputs are fixed by the biases:
    key e3, gate closed (write to the least used slot), a sharp key strength, and (write="add")
    the write vector e2."""
    memory = LRUAMemory(controller_size=4, slots=4, size=4, reads=1, gamma=gamma, write=write)
    bias = torch.zeros(memory.heads.out_features)
    bias[3] = 30.0  # key = tanh(.) = e3
    bias[4] = -30.0  # gate σ(α) ≈ 0: write to the least used slot
    bias[5] = 30.0  # key strength 1 + softplus(30)
    if write == "add":
        bias[6 + 2] = 30.0  # write vector e2
    with torch.no_grad():
        memory.heads.weight.zero_()
        memory.heads.bias.copy_(bias)
    return memory


def test_paper_writes_the_read_key_itself():
    memory = steered_memory("key")
    state = MemoryState(torch.eye(4)[None].clone(), torch.tensor([[0.5, 0.0, 0.9, 0.7]]), torch.zeros(1, 1, 4))
    _, new = memory(torch.randn(1, 4), state)
    key = torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert torch.allclose(new.memory[0, 1], key, atol=1e-6)  # slot 1 (least used) erased, then given k_t
    assert torch.allclose(new.memory[0, [0, 2, 3]], torch.eye(4)[[0, 2, 3]], atol=1e-6)
    assert memory.heads.out_features == 4 + 1 + 1  # key, gate, strength: no separate write vector
    other = steered_memory("add")
    _, new = other(torch.randn(1, 4), state)
    assert torch.allclose(new.memory[0, 1], torch.tensor([0.0, 0.0, 1.0, 0.0]), atol=1e-6)  # a_t, not k_t
    with pytest.raises(ConfigError, match="write 'erase'"):
        LRUAMemory(controller_size=4, write="erase")


def test_least_used_slot_is_chosen_with_the_decayed_usage():
    memory = steered_memory("add", gamma=0.5)
    u0 = torch.tensor([[1.6, 0.0, 5.0, 5.0]])
    state = MemoryState(torch.eye(4)[None].clone(), u0, torch.zeros(1, 1, 4))
    _, s1 = memory(torch.randn(1, 4), state)
    # Step 1 wrote to slot 1 (least used of u0) and read slot 3 (the key's), so
    # w^u_1 = 0.5 u0 + w^r + w^w = [0.8, 1, 2.5, 3.5]: slot 0 is now least used. Without
    # the decay (u0 + w^r + w^w = [1.6, 1, 5, 6]) it would be slot 1 again.
    assert torch.allclose(s1.usage, torch.tensor([[0.8, 1.0, 2.5, 3.5]]), atol=1e-4)
    assert memory.least_used(s1.usage).tolist() == [[1.0, 0.0, 0.0, 0.0]]
    add = torch.full((1, 1, 4), 0.25)
    new_memory, weights = memory.write(s1, add, torch.tensor([[-30.0]]))
    assert torch.allclose(weights[0, 0], torch.tensor([1.0, 0.0, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(new_memory[0, 0], add[0, 0], atol=1e-6)  # slot 0 erased, then written
    undecayed = steered_memory("add", gamma=1.0)
    _, s1 = undecayed(torch.randn(1, 4), state)
    assert undecayed.least_used(s1.usage).tolist() == [[0.0, 1.0, 0.0, 0.0]]


def test_least_used_marks_as_many_slots_as_reads_ties_to_lowest_index():
    memory = LRUAMemory(controller_size=4, slots=5, size=2, reads=2)
    assert memory.least_used(torch.tensor([[0.4, 0.2, 0.9, 0.1, 0.3]])).tolist() == [[0, 1, 0, 1, 0]]
    assert memory.least_used(torch.zeros(1, 5)).tolist() == [[1, 1, 0, 0, 0]]


def test_read_is_by_content():
    memory = LRUAMemory(controller_size=4, slots=5, size=4, reads=1)
    rows = torch.eye(5, 4)[None] * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])[None, :, None]
    rows[0, 4] = torch.tensor([1.0, 1.0, 0.0, 0.0])
    key = torch.tensor([[[0.0, 0.0, 0.5, 0.0]]])  # points the way of slot 2, whatever its norm
    weights, read = memory.read(rows, key)
    assert int(weights.argmax()) == 2 and torch.allclose(weights.sum(), torch.tensor(1.0))
    weights, read = memory.read(rows, key, strength=torch.tensor([[50.0]]))
    assert weights[0, 0, 2] > 0.99 and torch.allclose(read[0, 0], rows[0, 2], atol=0.1)


def test_usage_decays_and_adds_reads_and_writes():
    torch.manual_seed(0)
    memory = LRUAMemory(controller_size=4, slots=6, size=3, reads=1, gamma=0.9)
    usage = torch.rand(2, 6)
    state = MemoryState(torch.randn(2, 6, 3), usage, torch.softmax(torch.randn(2, 1, 6), dim=-1))
    _, new = memory(torch.randn(2, 4), state)
    writes = new.usage - 0.9 * usage - new.read_weights.sum(1)
    # Each head writes a unit mass (a mix of the last read and the one least used slot).
    assert torch.allclose(writes.sum(1), torch.ones(2), atol=1e-5) and bool((writes >= -1e-6).all())


def test_labels_arrive_one_step_late():
    method = small_mann().eval()
    x = torch.randn(1, 5, 10)
    y = torch.tensor([[0, 1, 2, 0, 1]])
    logits, _ = method.run(x, y)
    changed_last = y.clone()
    changed_last[0, 4] = 2
    assert torch.allclose(method.run(x, changed_last)[0], logits)  # y_t is not an input at step t ...
    changed_first = y.clone()
    changed_first[0, 0] = 2
    other = method.run(x, changed_first)[0]
    assert torch.allclose(other[:, 0], logits[:, 0]) and not torch.allclose(other[:, 1], logits[:, 1])  # ... y_{t-1} is


def test_sequence_order_is_fixed_by_content():
    x = torch.randn(12, 1, 4, 4)
    order = sequence_order(x)
    assert sorted(order.tolist()) == list(range(12)) and order.tolist() != list(range(12))
    perm = torch.randperm(12)
    assert torch.equal(x[perm][sequence_order(x[perm])], x[order])


def test_adapt_ignores_support_order_and_caps_the_way():
    method = small_mann().eval()
    ep = EpisodeSampler(clusters(), "test", 3, 2, 3).episode(0)
    with torch.no_grad():
        base = method.adapt(ep.support_x, ep.support_y, 3)(ep.query_x)
        perm = torch.randperm(6)
        assert torch.allclose(method.adapt(ep.support_x[perm], ep.support_y[perm], 3)(ep.query_x), base, atol=1e-5)
        # Queries are predicted independently: one query alone gets the same logits.
        assert torch.allclose(method.adapt(ep.support_x, ep.support_y, 3)(ep.query_x[:1]), base[:1], atol=1e-5)
        assert method.adapt(ep.support_x[:4], ep.support_y[:4], 2)(ep.query_x).shape == (9, 2)
    with pytest.raises(ConfigError, match="--train-way 5"):
        method.adapt(ep.support_x, ep.support_y, 5)
    with pytest.raises(ConfigError, match="image_shape"):
        MANN(MLP(10, (8,)))
    with pytest.raises(ConfigError, match="'encoder' must be one of backbone, pixels, got 'lstm'"):
        MANN(MLP(10, (8,)), image_shape=(10, 1, 1), encoder="lstm")


def test_pixel_encoder_ignores_the_backbone():
    method = MANN(MLP(784, (8,)), image_shape=(1, 28, 28), controller_size=8)  # pixels by default
    assert not any(k.startswith("backbone") for k in method.state_dict())
    assert method.encode(torch.rand(3, 1, 28, 28)).shape == (3, 400)  # 20x20, as in the paper
    small = MANN(None, image_shape=(3, 8, 8), controller_size=8)  # smaller images are left as they are
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(small.encode(x), x.flatten(1))
    with pytest.raises(ConfigError, match="needs a backbone"):
        MANN(None, image_shape=(3, 8, 8), encoder="backbone")


def test_learns_to_bind_labels_and_reports_accuracy_by_instance():
    # Labels are shuffled in every episode, so only binding them in memory helps.
    data = clusters()
    method = small_mann(way=2)
    opt = torch.optim.Adam(method.parameters(), 1e-2)
    sampler = EpisodeSampler(data, "train", 2, 1, 4)
    for step in range(600):
        loss, metrics = method.loss(sampler.batch(step, 8))
        opt.zero_grad()
        loss.backward()
        opt.step()
    seen = instance_accuracy(method, EpisodeSampler(data, "train", 2, 1, 4, seed=5), 64, instances=(1, 2, 5, 10))
    assert set(seen) == {1, 2, 5, "sequence", "episodes"}  # no 10th instance in 5-long sequences
    assert seen[5]["accuracy"] > 88 and seen[1]["accuracy"] < seen[5]["accuracy"]  # the 1st is (mostly) a guess
    novel = instance_accuracy(method, EpisodeSampler(data, "test", 2, 1, 4, seed=5), 64, instances=(1, 5))
    assert novel[5]["accuracy"] > 80
    assert evaluate(method, EpisodeSampler(data, "test", 2, 2, 5), 20, progress=False).accuracy > 75


def test_the_papers_rmsprop_recipe(tmp_path, digits8):
    recipe = TrainConfig.layered(Path(__file__).parents[1] / "configs" / "mann-omniglot-5way-paper.json")
    assert (recipe.optimizer, recipe.lr, recipe.momentum, recipe.meta_batch) == ("rmsprop", 1e-4, 0.9, 16)
    assert recipe.train_shape == (5, 1, 9)  # sequences of 5 classes x 10 instances: 50 steps
    assert recipe.method_options == {"write": "key"}  # the paper writes its read key; the default is "add"
    assert small_mann().get_params()["write"] == "add"
    config = TrainConfig(method="mann", method_options={"controller_size": 8}, dataset="digits",
                         backbone_options={"depth": 2}, way=3, shot=1, query=2, episodes=2, val_split=None,
                         optimizer="rmsprop", lr=1e-4)
    trainer = Trainer(config, tmp_path / "run", dataset=digits8)
    assert isinstance(trainer.optimizer, torch.optim.RMSprop)
    group = trainer.optimizer.param_groups[0]
    assert (group["lr"], group["alpha"], group["momentum"]) == (1e-4, 0.95, 0.9)
