"""Memory-augmented neural network (Santoro, Bartunov, Botvinick, Wierstra and Lillicrap, ICML 2016).

arXiv:1605.06065.

An episode is one sequence. At step ``t`` an LSTM controller receives the encoded
example ``x_t``, the one-hot label of the *previous* step ``y_{t-1}`` and the vectors
read from memory at ``t-1``; it predicts ``y_t`` from its output and the new reads.
So the network must bind each example to its label in memory, one step late, and
recall the binding when the class comes again.

The external memory (``slots`` × ``size``) uses least-recently-used access (LRUA,
section 3.1 of the paper), per read head:

* read by content: ``w^r_t(i) = softmax_i(β · cos(k_t, M_t(i)))``, ``r_t = Σ_i w^r_t(i) M_t(i)``.
  The paper has no key strength (``β = 1``); ``key_strength=True`` (the default) lets
  the controller emit ``β = 1 + softplus(·)``, as in the Neural Turing Machine's content
  addressing (Graves et al., 2014), which sharpens reads over 128 slots and learns
  much faster on a CPU budget.
* usage ``w^u_t = γ w^u_{t-1} + w^r_t + w^w_t``; ``w^lu_t`` marks the ``reads`` least
  used slots (ties to the lowest index);
* write ``w^w_t = σ(α) w^r_{t-1} + (1 - σ(α)) w^lu_{t-1}``: to the slot just read, or
  to a least used one (the interpolation gate ``α``, one per head); before writing, the
  least used slot (by ``w^u_{t-1}``, the decayed usage) is erased;
  ``M_t(i) = M_{t-1}(i) + w^w_t(i) a_t``. The paper writes the very key it reads with
  (``a_t = k_t``, ``write="key"``); by default (``write="add"``) the controller emits a
  separate write vector ``a_t``, as the Neural Turing Machine and the widely used
  reimplementation tristandeleu/ntm-one-shot do, for a measured reason: on Omniglot with
  4 CPU-minutes of training (841 steps of 16 sequences), the paper's key writing learned
  no label binding at all (validation at chance, 20 %, at every check; accuracy after
  the first presentation 25-31 %), where the same recipe with a separate vector reached
  44 % validation accuracy by step 500 and 65.6 % at the 5th presentation
  (``benchmarks/results/metric_recipes.md``). One key must
  both look up the current example and be stored as the previous one's binding; a
  separate vector decouples the two.

Santoro et al. train with RMSprop (learning rate 1e-4, momentum 0.9, decay 0.95) for
100,000 episodes of 16 sequences; ``optimizer="rmsprop"`` in a training config does
the same (``configs/mann-omniglot-5way-paper.json``). On a CPU budget of minutes we
train with Adam at 1e-3 instead (``configs/mann-omniglot-5way-add.json``): the paper's
smaller rate is spread over far more episodes than a budget of minutes affords (which
of the two learns faster here has not been measured).

Sequences: the support and query examples of an episode are presented in an order
that is pseudo-random but fixed by their content (a hash of each example's pixels),
so the same episode always gives the same sequence, whatever order it arrives in.
:meth:`MANN.loss` is the paper's objective: cross-entropy of the prediction at every
step of the whole sequence (support and query together, each with its label one step
later). :meth:`MANN.adapt` feeds the support sequence, then predicts each query as the
next step from the state the support left: its label input is the last support
example's label (the step that delivers that binding), its own label is never given,
and queries do not see one another. :func:`instance_accuracy` measures accuracy by
the instance number of a class in the sequence (1st, 2nd, ... presentation), as the
paper's Table 1 does.

Inputs: ``encoder="pixels"`` (the default, as the paper) feeds the raw image, averaged
down to ``pixel_size``² (20×20 in the paper) when it is larger; the backbone is then
not used. ``encoder="backbone"`` feeds the backbone's features instead (on Omniglot
and a CPU budget, a Conv-4 learns several times slower per CPU-second than pixels).
The output layer has ``way`` units (the training way); episodes of fewer ways use the
first ones.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.episodes import Episode, EpisodeSampler
from ..errors import ConfigError
from ..models.backbones import feature_dim
from ..metrics import accuracy, confidence_interval
from ..params import Boolean, Integer, OneOf, Real
from .base import Method, Predictor, register

ENCODERS = ("backbone", "pixels")
WRITES = ("key", "add")


class MemoryState(NamedTuple):
    memory: torch.Tensor  # (batch, slots, size)
    usage: torch.Tensor  # (batch, slots): w^u
    read_weights: torch.Tensor  # (batch, reads, slots): w^r of the previous step


class LRUAMemory(nn.Module):
    """External memory with least-recently-used access, addressed from a controller state."""

    def __init__(self, controller_size: int, slots: int = 128, size: int = 40, reads: int = 4, gamma: float = 0.95,
                 key_strength: bool = True, write: str = "add"):
        super().__init__()
        if reads > slots:
            raise ConfigError(f"mann needs at least as many memory slots as reads, got {slots} slots and {reads} reads")
        if write not in WRITES:
            raise ConfigError(f"unknown mann write '{write}'; choose one of: {', '.join(WRITES)}")
        self.slots, self.size, self.reads, self.gamma, self.key_strength = slots, size, reads, gamma, key_strength
        self.write_kind = write
        # Per read head: key k, write gate α, (optionally) key strength β, and with write="add" a write vector a.
        self.heads = nn.Linear(controller_size, reads * (size + 1 + int(key_strength) + size * (write == "add")))

    def initial_state(self, batch: int, device: torch.device | None = None) -> MemoryState:
        return MemoryState(torch.full((batch, self.slots, self.size), 1e-6, device=device),
                           torch.zeros(batch, self.slots, device=device),
                           torch.zeros(batch, self.reads, self.slots, device=device))

    def least_used(self, usage: torch.Tensor) -> torch.Tensor:
        """``w^lu``: 1 on the ``reads`` least used slots (ties to the lowest index), else 0."""
        order = torch.sort(usage, dim=1, stable=True).indices[:, : self.reads]
        return torch.zeros_like(usage).scatter_(1, order, 1.0)

    def write(self, state: MemoryState, add: torch.Tensor, gate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Erase the least used slot, then write ``add`` (batch, reads, size) with weights
        ``σ(gate) w^r_{t-1} + (1 - σ(gate)) w^lu_{t-1}``. Returns (memory, write weights)."""
        lu = self.least_used(state.usage)
        sigma = torch.sigmoid(gate)[..., None]
        write_weights = sigma * state.read_weights + (1 - sigma) * lu[:, None]
        erase = F.one_hot(torch.sort(state.usage, dim=1, stable=True).indices[:, 0], self.slots).to(add.dtype)
        memory = state.memory * (1 - erase)[..., None] + torch.einsum("brn,brs->bns", write_weights, add)
        return memory, write_weights

    def read(self, memory: torch.Tensor, key: torch.Tensor, strength: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Content read: weights softmax(β cos(key, M(i))) over slots, and the read vectors."""
        similarity = F.normalize(key, dim=-1) @ F.normalize(memory, dim=-1).transpose(1, 2)
        if strength is not None:
            similarity = similarity * strength[..., None]
        weights = torch.softmax(similarity, dim=-1)
        return weights, weights @ memory

    def forward(self, controller: torch.Tensor, state: MemoryState) -> tuple[torch.Tensor, MemoryState]:
        """One LRUA step from the controller output: write, then read. Returns the flat reads."""
        b, r, s = len(controller), self.reads, self.size
        params = self.heads(controller)
        key = torch.tanh(params[:, : r * s]).view(b, r, s)
        gate = params[:, r * s: r * s + r]
        strength = 1 + F.softplus(params[:, r * s + r: r * s + 2 * r]) if self.key_strength else None
        add = torch.tanh(params[:, -r * s:]).view(b, r, s) if self.write_kind == "add" else key
        memory, write_weights = self.write(state, add, gate)
        read_weights, reads = self.read(memory, key, strength)
        usage = self.gamma * state.usage + read_weights.sum(1) + write_weights.sum(1)
        return reads.reshape(b, r * s), MemoryState(memory, usage, read_weights)


def sequence_order(x: torch.Tensor) -> torch.Tensor:
    """A pseudo-random order of the examples ``x`` fixed by their content: the argsort of
    a hash of each example's bytes, so it does not depend on the order they come in."""
    rows = x.detach().to("cpu", torch.float32).reshape(len(x), -1).contiguous().numpy()
    keys = [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little") for row in rows]
    return torch.from_numpy(np.argsort(np.array(keys, dtype=np.uint64), kind="stable")).to(x.device)


@register
class MANN(Method):
    """Memory-augmented neural network with an LSTM controller (``controller_size``) and an
    LRUA memory (``memory_slots`` × ``memory_size``, ``reads`` heads, usage decay ``gamma``,
    ``write`` "key" or "add"). Needs ``image_shape``; ``way`` sizes the label input and
    output (default 5)."""

    name = "mann"
    _parameter_constraints = {"way": Integer(low=1), "encoder": OneOf(*ENCODERS), "pixel_size": Integer(low=1),
                              "controller_size": Integer(low=1), "memory_slots": Integer(low=1),
                              "memory_size": Integer(low=1), "reads": Integer(low=1), "gamma": Real(low=0, high=1),
                              "key_strength": Boolean(), "write": OneOf(*WRITES)}

    def __init__(self, backbone: nn.Module | None, image_shape: Sequence[int] | None = None, way: int = 5,
                 encoder: str = "pixels", pixel_size: int = 20, controller_size: int = 200,
                 memory_slots: int = 128, memory_size: int = 40, reads: int = 4, gamma: float = 0.95,
                 key_strength: bool = True, write: str = "add"):
        super().__init__(backbone if encoder == "backbone" else None)
        if image_shape is None:
            raise ConfigError("mann needs image_shape=(c, h, w) to size its controller")
        if encoder == "backbone" and backbone is None:
            raise ConfigError("mann encoder='backbone' needs a backbone; or use encoder='pixels'")
        self.way, self.encoder_kind, self.pixel_size = way, encoder, pixel_size
        self.controller_size, self.key_strength = controller_size, bool(key_strength)
        self.input_size = (min(pixel_size, int(image_shape[1])), min(pixel_size, int(image_shape[2])))
        in_features = (feature_dim(backbone, image_shape) if encoder == "backbone"
                       else int(image_shape[0]) * self.input_size[0] * self.input_size[1])
        self.memory = LRUAMemory(controller_size, memory_slots, memory_size, reads, float(gamma), self.key_strength,
                                 write)
        self.controller = nn.LSTMCell(in_features + way + reads * memory_size, controller_size)
        self.output = nn.Linear(controller_size + reads * memory_size, way)

    # -- the recurrent core ------------------------------------------------------------

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Flat inputs ``(n, d)`` of images ``x``."""
        if self.backbone is not None:
            return self.backbone(x)
        if tuple(x.shape[2:]) != self.input_size:
            x = F.adaptive_avg_pool2d(x, self.input_size)
        return x.flatten(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)

    def initial_state(self, batch: int, device: torch.device | None = None) -> tuple:
        zeros = torch.zeros(batch, self.controller_size, device=device)
        reads = torch.zeros(batch, self.memory.reads * self.memory.size, device=device)
        return zeros, zeros.clone(), reads, self.memory.initial_state(batch, device)

    def step(self, x: torch.Tensor, previous_label: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        """One time step: inputs ``x`` (batch, d), one-hot ``previous_label`` (batch, way)."""
        h, c, reads, memory_state = state
        h, c = self.controller(torch.cat([x, previous_label, reads], dim=1), (h, c))
        reads, memory_state = self.memory(h, memory_state)
        return self.output(torch.cat([h, reads], dim=1)), (h, c, reads, memory_state)

    def run(self, x: torch.Tensor, y: torch.Tensor, state: tuple | None = None) -> tuple[torch.Tensor, tuple]:
        """Run sequences of inputs ``x`` (batch, steps, d) with labels ``y`` (batch, steps),
        each label given one step late. Returns the logits (batch, steps, way) and the state."""
        b, steps = y.shape
        if int(y.max()) >= self.way:
            raise ConfigError(f"mann was built for {self.way}-way episodes; train it with --train-way "
                              f"{int(y.max()) + 1} or more for these")
        state = state if state is not None else self.initial_state(b, x.device)
        previous = torch.zeros(b, self.way, device=x.device)
        outputs = []
        for t in range(steps):
            logits, state = self.step(x[:, t], previous, state)
            outputs.append(logits)
            previous = F.one_hot(y[:, t], self.way).to(x.dtype)
        return torch.stack(outputs, dim=1), state

    def sequence_logits(self, episodes: Sequence[Episode]) -> tuple[torch.Tensor, torch.Tensor]:
        """The paper's sequences: every example of each episode (support and query), in
        content-fixed order. Returns logits (batch, steps, way) and labels (batch, steps)."""
        xs, ys = [], []
        for ep in episodes:
            x, y = torch.cat([ep.support_x, ep.query_x]), torch.cat([ep.support_y, ep.query_y])
            order = sequence_order(x)
            xs.append(x[order])
            ys.append(y[order])
        lengths = {len(y) for y in ys}
        if len(lengths) > 1:
            raise ConfigError("mann needs the episodes of a meta-batch to have the same number of examples")
        x, y = torch.stack(xs), torch.stack(ys)
        features = self.encode(x.flatten(0, 1)).view(len(episodes), x.shape[1], -1)
        return self.run(features, y)[0], y

    # -- the Method interface ----------------------------------------------------------

    def loss(self, episodes: Sequence[Episode]) -> tuple[torch.Tensor, dict[str, float]]:
        logits, y = self.sequence_logits(episodes)
        way = max(ep.way for ep in episodes)
        logits = logits[..., :way].flatten(0, 1)
        return F.cross_entropy(logits, y.flatten()), {"accuracy": accuracy(logits, y.flatten())}

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        if way > self.way:
            raise ConfigError(f"mann was built for {self.way}-way episodes and cannot predict {way} ways; "
                              f"train it with --train-way {way} or more")
        order = sequence_order(support_x)
        x, y = self.encode(support_x[order])[None], support_y[order][None]
        _, state = self.run(x, y)
        last = F.one_hot(y[:, -1], self.way).to(x.dtype)

        def predict(query_x: torch.Tensor) -> torch.Tensor:
            n = len(query_x)
            h, c, reads, m = state
            expanded = (h.expand(n, -1), c.expand(n, -1), reads.expand(n, -1),
                        MemoryState(*(t.expand(n, *t.shape[1:]) for t in m)))
            logits, _ = self.step(self.encode(query_x), last.expand(n, -1), expanded)
            return logits[:, :way]

        return predict


@torch.no_grad()
def instance_accuracy(method: MANN, sampler: EpisodeSampler, episodes: int = 600, batch: int = 16,
                      instances: Sequence[int] = (1, 2, 5, 10)) -> dict:
    """Accuracy (%, mean ± 95% CI over episodes) by the instance number of a class in the
    sequence, as in Santoro et al.'s Table 1, on episodes ``0 .. episodes-1`` of ``sampler``.

    Each episode is one sequence of all its ``shot + query`` examples per class, as in
    meta-training; ``instances`` beyond that count are left out. Also gives the accuracy
    over all steps of the sequences (``sequence``).
    """
    per_class = sampler.shot + sampler.query
    wanted = [k for k in instances if 1 <= k <= per_class]
    was_training = method.training
    method.eval()
    correct_by = {k: [] for k in wanted}
    overall = []
    try:
        for start in range(0, episodes, batch):
            eps = [sampler.episode(i) for i in range(start, min(start + batch, episodes))]
            logits, y = method.sequence_logits(eps)
            correct = (logits[..., : sampler.way].argmax(-1) == y).float()
            # Instance number of each step: how many times its class has been seen, plus one.
            seen = torch.cumsum(F.one_hot(y, sampler.way), dim=1).gather(2, y[..., None])[..., 0]
            for k in wanted:
                at_k = seen == k
                correct_by[k] += ((correct * at_k).sum(1) / at_k.sum(1)).tolist()
            overall += correct.mean(1).tolist()
    finally:
        method.train(was_training)
    out = {}
    for k, values in correct_by.items():
        mean, ci = confidence_interval(np.array(values) * 100)
        out[k] = {"accuracy": mean, "ci95": ci}
    mean, ci = confidence_interval(np.array(overall) * 100)
    out["sequence"] = {"accuracy": mean, "ci95": ci}
    out["episodes"] = episodes
    return out
