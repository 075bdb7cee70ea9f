"""ProML: the prompts, the NCA loss against a loop reference, and the method end to end (alone and in the benchmark
runner) on a tiny random BERT."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import shared_dataset
from test_container import TYPES, build_tiny_encoder, random_sentences

from cllmfs_trainer.benchmark import Benchmark, BenchmarkConfig
from cllmfs_trainer.benchmark.baselines import proml as proml_module
from cllmfs_trainer.benchmark.baselines.gaussian_metric import symmetric_kl
from cllmfs_trainer.benchmark.baselines.proml import (
    ProMLConfig,
    ProMLNER,
    label_aware_prompt,
    option_prompt,
    proml_loss,
)
from cllmfs_trainer.data import Sentence, Span
from cllmfs_trainer.data.registry import EntityType

ENTITY_TYPES = [EntityType("person", "person", "people"), EntityType("location", "big location", "places")]
SMALL = ProMLConfig(projection_dim=8, layers=2, source_steps=2, episode_ways=2, max_finetune_steps=3)


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


# --- Prompts ----------------------------------------------------------------------------------------------------------


def test_option_prompt_lists_the_label_names():
    assert option_prompt(["person", "big location"]) == ["person", ",", "big", "location", ":"]


def test_label_aware_prompt_writes_entities_inline():
    words = "anna lee met bob in rome".split()
    spans = [Span(0, 2, "person"), Span(3, 4, "person"), Span(5, 6, "location"), Span(4, 5, "misc")]
    prompt, kept = label_aware_prompt(words, spans, {"person": "person", "location": "big location"})
    assert prompt == "[ anna lee | person ] met [ bob | person ] in [ rome | big location ]".split()
    assert [prompt[i] for i in kept] == words  # the sentence's own words, where the encoder reads them


# --- The loss against a loop ------------------------------------------------------------------------------------------


def proml_loss_loop(q_mu, q_var, q_labels, s_mu, s_var, s_labels, exclude_self) -> float:
    """NCA, one query word at a time: -log(sum of exp(-d) over same-label support words / sum over all of them)."""
    losses = []
    for i in range(len(q_labels)):
        support = [j for j in range(len(s_labels)) if not (exclude_self and i == j)]
        weight = {j: math.exp(-2 * symmetric_kl(q_mu[[i]], q_var[[i]], s_mu[[j]], s_var[[j]]).item()) for j in support}
        positives = [j for j in support if s_labels[j] == q_labels[i]]
        if positives:
            losses.append(-math.log(sum(weight[j] for j in positives) / sum(weight.values())))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_proml_loss_matches_a_loop_reference(exclude_self):
    g = torch.Generator().manual_seed(0)
    n = 7
    q_mu, s_mu = torch.randn(n, 3, generator=g).double() * 0.5, torch.randn(n, 3, generator=g).double() * 0.5
    q_var, s_var = torch.rand(n, 3, generator=g).double() + 0.5, torch.rand(n, 3, generator=g).double() + 0.5
    q_labels = torch.tensor([0, 1, 1, 0, 2, 0, 3])  # 3 has no support word: left out of the mean
    s_labels = q_labels.clone() if exclude_self else torch.tensor([0, 0, 1, 2, 2, 1, 0])
    got = proml_loss(q_mu, q_var, q_labels, s_mu, s_var, s_labels, exclude_self)
    expected = proml_loss_loop(q_mu, q_var, q_labels.tolist(), s_mu, s_var, s_labels.tolist(), exclude_self)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_proml_loss_stays_finite_when_every_positive_underflows():
    # Far apart Gaussians: exp(-d) is 0 in floating point, where the public code's -log(0) was replaced by 0.
    mu = torch.tensor([[0.0], [1000.0]], requires_grad=True)
    loss = proml_loss(
        mu, torch.ones(2, 1), torch.tensor([1, 0]), mu.detach() + 0.0, torch.ones(2, 1), torch.tensor([0, 1])
    )
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 1e5 and torch.isfinite(mu.grad).all()
    empty = proml_loss(mu, torch.ones(2, 1), torch.tensor([1, 1]), mu.detach(), torch.ones(2, 1), torch.tensor([0, 0]))
    assert empty.item() == 0.0 and empty.requires_grad


# --- The method ---------------------------------------------------------------------------------------------------


def test_proml_trains_fine_tunes_and_predicts_deterministically(tiny_encoder):
    support, query, source = random_sentences(6, 0), random_sentences(5, 1), random_sentences(20, 2)

    def run():
        ner = ProMLNER(tiny_encoder, SMALL, seed=0, device="cpu")
        stats = ner.train_source(source, ENTITY_TYPES)
        return ner, stats, ner.fit(support, ENTITY_TYPES).predict(query)

    (first, stats, spans), (again, _, spans_again) = run(), run()
    assert stats["source_steps"] == 2 and 2 <= first.finetune_steps <= 3
    assert spans == spans_again
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters()))
    other = ProMLNER(tiny_encoder, SMALL, seed=1, device="cpu")
    assert not torch.equal(other.heads["mu"].weight, ProMLNER(tiny_encoder, SMALL, seed=0).heads["mu"].weight)
    labels = first.predict_labels(query)
    assert [len(x) for x in labels] == [len(s.tokens) for s in query]
    assert {x for row in labels for x in row} <= {"O", *TYPES}


def test_prompts_of_long_sentences_stay_within_the_window(tiny_encoder):
    config = ProMLConfig(projection_dim=8, layers=1, max_length=20, max_finetune_steps=1)
    long = Sentence(["anna", "met", "parisb", "in", "rome"] * 5, [Span(0, 3, "person"), Span(20, 25, "location")])
    ner = ProMLNER(tiny_encoder, config, seed=0, device="cpu").fit([long, *random_sentences(3, 0)], ENTITY_TYPES)
    option, aware, labels = ner._inputs([long], ENTITY_TYPES, label_aware=True)
    assert len(option) > 1 and sum(len(x) for x in labels) == 25
    for words, _ in [*option, *aware]:
        assert len(ner.tokenizer(words, is_split_into_words=True)["input_ids"]) <= 20
    assert "[" in aware[0][0] and "]" in aware[-1][0]  # the cut spans keep their brackets in both chunks
    assert len(ner.predict_labels([long, Sentence([], [])])[0]) == 25


# --- In the benchmark runner ------------------------------------------------------------------------------------------


def support_only_config(out, encoder, **overrides) -> BenchmarkConfig:
    params = dict(output_dir=str(out), tasks=["intra:wnut17"], methods=["proml"], seeds=[0], ks=[1])
    params.update(query_size=12, encoder=encoder)
    return BenchmarkConfig(**{**params, **overrides})


def test_proml_runs_in_the_benchmark_intra(tiny_encoder, tmp_path, monkeypatch):
    monkeypatch.setattr(proml_module, "BENCHMARK_CONFIG", SMALL)
    [record] = Benchmark(support_only_config(tmp_path, tiny_encoder)).run(progress=False)
    assert record["method"] == "proml" and record["query_size"] == 12 and 0.0 <= record["span"]["f1"] <= 1.0
    assert record["finetune_steps"] >= 2 and "source_steps" not in record
    assert record["span"]["tp"] + record["span"]["fp"] == record["errors"]["n_pred"]


def test_proml_inter_trains_on_ontonotes_once_per_seed(tiny_encoder, tmp_path, monkeypatch):
    monkeypatch.setattr(proml_module, "BENCHMARK_CONFIG", SMALL)
    config = support_only_config(
        tmp_path, tiny_encoder, tasks=["inter:wnut17"], data_dir=str(shared_dataset("ontonotes5").parent)
    )
    [record] = Benchmark(config).run(progress=False)
    assert record["source_cached"] is False and record["source_episodes"] == 2
    meta = json.loads((tmp_path / "source_models" / "proml" / "seed0" / "source.json").read_text())
    assert meta["fingerprint"]["method"] == "proml" and meta["fingerprint"]["config"]["source_steps"] == 2

    for path in (tmp_path / "units").rglob("proml.*"):
        path.unlink()
    [cached] = Benchmark(config).run(progress=False)
    assert cached["source_cached"] is True and cached["span"] == record["span"]
