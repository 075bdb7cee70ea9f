"""CONTaiNER: the Gaussian distance and contrastive loss against loop references, Viterbi against brute force, the
word encoding helpers, and the method end to end (alone and in the benchmark runner) on a tiny random BERT."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
import torch
from helpers import shared_dataset

from cllmfs_trainer.benchmark import Benchmark, BenchmarkConfig
from cllmfs_trainer.benchmark.baselines import container as container_module
from cllmfs_trainer.benchmark.baselines.container import (
    ContainerConfig,
    ContainerNER,
    container_loss,
    transition_priors,
    transition_scores,
    viterbi,
)
from cllmfs_trainer.benchmark.baselines.gaussian_metric import (
    chunk_ranges,
    clean_words,
    encode_words,
    nearest_by_label,
    symmetric_kl,
)
from cllmfs_trainer.data import Sentence, Span

TYPES = ["person", "location"]
WORDS = "the a cat dog sat ran on in to from paris rome anna bob lee met saw big old".split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", ":", "[", "]", "|", *WORDS, "##b", "##s"]
SMALL = ContainerConfig(embedding_dim=8, batch_size=4, source_steps=2, max_finetune_steps=3)


def build_tiny_encoder(root) -> str:
    """A random 2-layer BERT and its WordPiece tokenizer, saved in `root` (any HF encoder folder works)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizer(str(root / "vocab.txt")).save_pretrained(root)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        BertModel(config).save_pretrained(root)
    return str(root)


@pytest.fixture(autouse=True)
def one_thread():
    """A tiny model runs fastest on one thread; threads competing for busy cores slow it down a hundredfold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder"))


def random_sentences(n: int, seed: int, types=TYPES) -> list[Sentence]:
    """Sentences over the tiny vocabulary (some words split into pieces), with spans of `types` apart."""
    rng = random.Random(seed)
    words = [*WORDS, "parisb", "annas"]
    sentences = []
    for i in range(n):
        tokens = [rng.choice(words) for _ in range(rng.randint(3, 10))]
        spans, pos = [], rng.randint(0, 2)
        while pos < len(tokens):
            end = min(len(tokens), pos + rng.randint(1, 2))
            spans.append(Span(pos, end, rng.choice(types)))
            pos = end + rng.randint(1, 3)
        sentences.append(Sentence(tokens, spans, f"s{i}"))
    return sentences


# --- The distance and the loss against loops --------------------------------------------------------------------------


def kl(mu_p, var_p, mu_q, var_q) -> float:
    """KL(N(mu_p, var_p) || N(mu_q, var_q)) for diagonal Gaussians, written out dimension by dimension."""
    total = 0.0
    for k in range(len(mu_p)):
        total += 0.5 * (math.log(var_q[k] / var_p[k]) + (var_p[k] + (mu_p[k] - mu_q[k]) ** 2) / var_q[k] - 1.0)
    return total


def test_symmetric_kl_matches_a_loop_over_pairs():
    g = torch.Generator().manual_seed(0)
    mu_a, mu_b = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g).double()
    var_a, var_b = torch.rand(5, 4, generator=g).double() + 0.5, torch.rand(3, 4, generator=g).double() + 0.5
    got = symmetric_kl(mu_a, var_a, mu_b, var_b)
    for i, j in itertools.product(range(5), range(3)):
        a, b = (mu_a[i].tolist(), var_a[i].tolist()), (mu_b[j].tolist(), var_b[j].tolist())
        assert got[i, j].item() == pytest.approx(0.5 * (kl(*a, *b) + kl(*b, *a)), rel=1e-9)
    assert torch.allclose(symmetric_kl(mu_a, var_a, mu_a, var_a).diagonal(), torch.zeros(5, dtype=torch.float64))


def container_loss_loop(mu, var, labels, outside_anchors) -> float:
    """The paper's loss, one anchor at a time: -log(mean positive exp(-d) / sum over the others of exp(-d))."""
    n, losses = len(labels), []
    for p in range(n):
        if labels[p] == 0 and not outside_anchors:
            continue
        positives = [q for q in range(n) if q != p and labels[q] == labels[p]]
        if not positives:
            continue
        sim = {q: math.exp(-symmetric_kl(mu[[p]], var[[p]], mu[[q]], var[[q]]).item()) for q in range(n) if q != p}
        numerator = sum(sim[q] for q in positives) / len(positives)
        losses.append(-math.log(numerator / sum(sim.values())))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("outside_anchors", [False, True])
def test_container_loss_matches_a_loop_reference(outside_anchors):
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(9, 3, generator=g, dtype=torch.float64) * 0.5
    var = torch.rand(9, 3, generator=g, dtype=torch.float64) + 0.5
    labels = torch.tensor([0, 1, 1, 0, 2, 0, 1, 3, 2])  # label 3 has no positive: never an anchor
    got = container_loss(mu, var, labels, outside_anchors)
    assert got.item() == pytest.approx(container_loss_loop(mu, var, labels.tolist(), outside_anchors), rel=1e-9)


def test_container_loss_without_anchors_is_zero_and_differentiable():
    mu = torch.randn(3, 2, requires_grad=True)
    loss = container_loss(mu, torch.ones(3, 2), torch.tensor([0, 0, 1]))  # O words are not anchors here
    loss.backward()
    assert loss.item() == 0.0 and mu.grad is not None and not mu.grad.abs().sum()


def test_nearest_by_label_scores_each_label_by_its_nearest_support_words():
    support, labels = torch.tensor([[0.0], [1.0], [5.0]]), torch.tensor([0, 0, 1])
    scores = nearest_by_label(torch.tensor([[1.0], [4.0]]), support, labels, n_labels=3)
    assert scores[:, :2].tolist() == [[0.0, -16.0], [-9.0, -1.0]] and torch.isinf(scores[:, 2]).all()
    assert nearest_by_label(torch.tensor([[1.0]]), support, labels, 2, topk=2).tolist() == [[-0.5, -16.0]]


# --- Viterbi over abstract transitions --------------------------------------------------------------------------------


def test_transition_priors_count_each_kind_of_move():
    rows = [["O", "PER", "PER", "O", "LOC"], ["LOC", "PER", "O"]]
    priors = transition_priors(rows)
    assert priors["start_o"] == pytest.approx(0.5) and priors["start_i"] == pytest.approx(0.5)
    assert priors["o_o"] == pytest.approx(0.0) and priors["o_i"] == pytest.approx(1.0)  # O->PER, O->LOC
    # From an entity: PER->PER (same), PER->O twice, LOC->PER (other).
    assert (priors["i_same"], priors["i_o"], priors["i_other"]) == pytest.approx((0.25, 0.5, 0.25))


def test_transition_scores_are_distributions_and_flatten_with_temperature():
    priors = transition_priors([["O", "O", "A", "A", "O", "B"], ["A", "O"]])
    start, trans = transition_scores(priors, n_types=2, temperature=1.0)
    assert torch.allclose(start.exp().sum(), torch.tensor(1.0)) and torch.allclose(trans.exp().sum(1), torch.ones(3))
    flat_start, flat = transition_scores(priors, n_types=2, temperature=0.01)
    assert (flat.exp().max(1).values - flat.exp().min(1).values).max() < (trans.exp().max(1).values).max()


def test_viterbi_matches_brute_force():
    g = torch.Generator().manual_seed(2)
    emissions, start, trans = (
        torch.randn(5, 3, generator=g),
        torch.randn(3, generator=g),
        torch.randn(3, 3, generator=g),
    )

    def score(path):
        return (
            start[path[0]]
            + sum(emissions[t, y] for t, y in enumerate(path))
            + sum(trans[a, b] for a, b in zip(path, path[1:]))
        )

    best = max(itertools.product(range(3), repeat=5), key=lambda p: score(p).item())
    assert viterbi(emissions, start, trans) == list(best)


# --- Words to encoder inputs ------------------------------------------------------------------------------------------


def test_chunk_ranges_respect_every_budget():
    assert chunk_ranges([[1, 1, 1, 1]], [2]) == [(0, 2), (2, 4)]
    assert chunk_ranges([[1, 1, 1, 1], [1, 3, 1, 1]], [4, 4]) == [(0, 2), (2, 4)]
    assert chunk_ranges([[5, 1]], [2]) == [(0, 1), (1, 2)]  # a word over budget still forms its own chunk
    assert chunk_ranges([[]], [3]) == []


def test_encode_words_reads_first_pieces_and_kept_positions(tiny_encoder):
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(tiny_encoder), AutoModel.from_pretrained(tiny_encoder).eval()
    words, counts = clean_words(tokenizer, ["the", "parisb", "\u200b", "cat"])
    assert words[2] == "[UNK]" and counts == [1, 2, 1, 1]
    with torch.no_grad():
        [vectors] = encode_words(model, tokenizer, [(words, [1, 3])], max_length=64)
        hidden = model(**tokenizer(words, is_split_into_words=True, return_tensors="pt")).last_hidden_state[0]
    # [CLS] the paris ##b [UNK] cat [SEP]: "parisb" starts at piece 2, "cat" is piece 5.
    assert torch.allclose(vectors, hidden[[2, 5]], atol=1e-6)


# --- The method ---------------------------------------------------------------------------------------------------


def test_container_trains_adapts_and_predicts_deterministically(tiny_encoder):
    support, query = random_sentences(6, 0), random_sentences(5, 1)
    source = random_sentences(12, 2, types=["PER", "GPE"])

    def run():
        ner = ContainerNER(tiny_encoder, SMALL, seed=0, device="cpu")
        stats = ner.train_source(source, ["PER", "GPE"])
        return ner, stats, ner.fit(support, TYPES).predict(query)

    (first, stats, spans), (again, _, spans_again) = run(), run()
    assert stats["source_steps"] == 2 and stats["source_sentences"] == 8 and 1 <= first.finetune_steps <= 3
    assert spans == spans_again
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters()))
    other = ContainerNER(tiny_encoder, SMALL, seed=1, device="cpu")
    assert not torch.equal(other.heads["mu"].weight, ContainerNER(tiny_encoder, SMALL, seed=0).heads["mu"].weight)
    labels = first.predict_labels(query)
    assert [len(x) for x in labels] == [len(s.tokens) for s in query]
    assert {x for row in labels for x in row} <= {"O", *TYPES}
    for sentence, predicted in zip(query, spans):
        assert all(0 <= s.start < s.end <= len(sentence.tokens) and s.type in TYPES for s in predicted)


def test_a_saved_source_model_adapts_like_the_one_in_memory(tiny_encoder, tmp_path):
    support, query, source = random_sentences(6, 0), random_sentences(5, 1), random_sentences(12, 2)
    trained = ContainerNER(tiny_encoder, SMALL, seed=0, device="cpu")
    trained.train_source(source, TYPES)
    trained.save(tmp_path / "source")
    loaded = ContainerNER(tiny_encoder, SMALL, seed=0, device="cpu")
    loaded.load_weights(tmp_path / "source")
    loaded.priors = trained.priors
    assert trained.fit(support, TYPES).predict(query) == loaded.fit(support, TYPES).predict(query)


def test_long_sentences_are_cut_into_chunks_and_every_word_is_labelled(tiny_encoder):
    config = ContainerConfig(embedding_dim=8, max_finetune_steps=1, max_length=8, viterbi=False)
    ner = ContainerNER(tiny_encoder, config, seed=0, device="cpu").fit(random_sentences(4, 0), TYPES)
    long = Sentence(["anna", "met", "parisb"] * 7, [Span(0, 1, "person")])  # 28 pieces for a 6-piece budget
    assert len(ner.predict_labels([long, Sentence([], [])])[0]) == 21


# --- In the benchmark runner ------------------------------------------------------------------------------------------


def support_only_config(out, encoder, **overrides) -> BenchmarkConfig:
    params = dict(output_dir=str(out), tasks=["intra:wnut17"], methods=["container"], seeds=[0], ks=[1])
    params.update(query_size=12, encoder=encoder)
    return BenchmarkConfig(**{**params, **overrides})


def test_container_runs_in_the_benchmark_intra(tiny_encoder, tmp_path, monkeypatch):
    monkeypatch.setattr(container_module, "BENCHMARK_CONFIG", SMALL)
    [record] = Benchmark(support_only_config(tmp_path, tiny_encoder)).run(progress=False)
    assert record["method"] == "container" and record["query_size"] == 12 and 0.0 <= record["span"]["f1"] <= 1.0
    assert record["finetune_steps"] >= 1 and "source_steps" not in record  # INTRA: no source training
    assert record["span"]["tp"] + record["span"]["fp"] == record["errors"]["n_pred"]


def test_container_inter_trains_on_ontonotes_once_per_seed(tiny_encoder, tmp_path, monkeypatch):
    monkeypatch.setattr(container_module, "BENCHMARK_CONFIG", SMALL)
    config = support_only_config(
        tmp_path, tiny_encoder, tasks=["inter:wnut17"], data_dir=str(shared_dataset("ontonotes5").parent)
    )
    [record] = Benchmark(config).run(progress=False)
    assert record["source_cached"] is False and record["source_sentences"] == 8
    source = tmp_path / "source_models" / "container" / "seed0"
    meta = json.loads((source / "source.json").read_text())
    assert meta["fingerprint"]["config"]["source_steps"] == 2 and (source / "heads.safetensors").is_file()
    predictions = (tmp_path / "units" / "inter-wnut17" / "k1" / "seed0" / "container.predictions.jsonl").read_text()

    for path in (tmp_path / "units").rglob("container.*"):
        path.unlink()
    [cached] = Benchmark(config).run(progress=False)
    assert cached["source_cached"] is True and cached["span"] == record["span"]
    assert (tmp_path / "units" / "inter-wnut17" / "k1" / "seed0" / "container.predictions.jsonl").read_text() == (
        predictions
    )
