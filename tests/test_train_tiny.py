"""scripts/train_tiny.py: its data pieces, and that a run is reproducible (same seed -> same weights, same figures)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import train_tiny as T  # noqa: E402

from k2trt.corpus import training_conversations  # noqa: E402


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return T.build_tokenizer(training_conversations(300, 0), tmp_path_factory.mktemp("tok"))


def test_copied_positions_are_exactly_the_value_tokens(tok):
    convs = [c for c in training_conversations(200, 0) if c.kind == "weather"][:5]
    assert convs
    for conv in convs:
        ex = T.encode(conv, tok)
        text = tok.decode([ex.ids[i] for i in ex.copied])
        city = conv.calls[0][1]["city"]
        assert all(ex.loss_mask[i] for i in ex.copied)  # only what the assistant writes
        assert text.startswith(city) and text.count(city) == 2  # in the call's arguments, then in the answer
        for v in conv.answer_values:
            assert v in text
        # the token after each value ends it: the call's closing quote, then the answer's words or full stop
        assert ex.ends and not set(ex.ends) & set(ex.copied) and all(ex.loss_mask[i] for i in ex.ends)
        after = [tok.decode([ex.ids[i]]) for i in ex.ends]
        assert after[0].startswith('"') and ex.ids[ex.ends[0] - 1] == ex.ids[ex.copied[0] + len(tok.encode(city)) - 1]


def test_topics_weigh_as_copied_values_only_when_asked(tok):
    conv = next(c for c in training_conversations(200, 0) if c.kind == "chat" and c.topics)
    (topic,) = conv.topics
    plain, weighed = T.encode(conv, tok), T.encode(conv, tok, topics=True)
    assert plain.ids == weighed.ids and not plain.copied and not plain.ends
    assert tok.decode([weighed.ids[i] for i in weighed.copied]).strip() == topic
    (end,) = weighed.ends  # where copying stops: the reply's "!", not an argument's closing quote
    assert tok.decode([weighed.ids[end]]).startswith("!")


def test_copy_rows_put_the_loss_on_the_repeat():
    rng = random.Random(0)
    ex = T.copy_example(rng, 2048)
    n = (len(ex.ids) - 1) // 2
    assert ex.ids[:n] == ex.ids[n + 1:] and ex.ids[n] == 2048 + T.COPY_MARK_OFFSET
    assert ex.loss_mask == [False] * (n + 1) + [True] * n
    cued = T.cued_copy_example(rng, 2048)
    cue = cued.ids.index(2048 + T.COPY_CUE_OFFSET)
    k = sum(cued.loss_mask)
    assert cued.ids[cue + 1: cue + 1 + k] == cued.ids[-k:] and cued.ids[-k - 1] == 2048 + T.COPY_MARK_OFFSET


def test_induction_rows_repeat_a_span_at_a_random_distance_with_loss_after_its_first_token():
    rng = random.Random(0)
    pool = [7, 7, 7, 11, 12, 13, 14, 15]
    gaps = set()
    for _ in range(50):
        ex = T.induction_example(rng, pool)
        k = sum(ex.loss_mask) + 1  # the span's length
        assert 4 <= k <= 12 and set(ex.ids) <= set(pool)
        assert ex.loss_mask == [False] * (len(ex.ids) - k + 1) + [True] * (k - 1)
        span = ex.ids[-k:]
        first = next(i for i in range(len(ex.ids) - k) if ex.ids[i:i + k] == span)
        gaps.add(len(ex.ids) - k - first)
    assert len(gaps) > 10  # no fixed offset to learn instead of induction


def test_induction_repeats_put_an_earlier_token_of_the_span_again_in_it_and_draw_nothing_when_off():
    pool = list(range(100, 5100))  # so wide that a span of distinct draws almost never repeats by chance
    rows = [T.induction_example(random.Random(s), pool, repeats=1.0) for s in range(200)]
    spans = [ex.ids[-(sum(ex.loss_mask) + 1):] for ex in rows]
    assert all(len(set(span)) < len(span) for span in spans)
    assert any(span[i] == span[i + 1] for span in spans for i in range(len(span) - 1))  # doubled letters too
    halves = [T.induction_example(random.Random(s), pool, repeats=0.5) for s in range(400)]
    repeated = sum(len(set(sp)) < len(sp) for sp in (ex.ids[-(sum(ex.loss_mask) + 1):] for ex in halves))
    assert 150 < repeated < 250
    # off: the rows are the ones runs before the option drew, and the stream goes on from the same place
    a, b = random.Random(3), random.Random(3)
    assert [T.induction_example(a, pool) for _ in range(5)] == [T.induction_example(b, pool, 0.0) for _ in range(5)]
    assert a.random() == b.random()


def test_word_pieces_are_the_letter_and_digit_tokens_of_the_vocabulary(tok):
    pieces = T.word_pieces(tok)
    texts = [tok.decode([i]) for i in pieces]
    assert all(i < tok.base_vocab_size for i in pieces)
    assert all(t.strip().isalnum() and t.strip().isascii() and t in (t.strip(), " " + t.strip()) for t in texts)
    assert {str(d) for d in range(10)} <= set(texts) and {"a", "Z"} <= set(texts)
    assert not {" ", ".", '"', "{"} & set(texts)
    # pieces no training value is made of are among them (what --induction-pool pieces adds)
    exs = [T.encode(c, tok) for c in training_conversations(300, 0)]
    copied = set(T.copy_pools(exs, 8)[0])
    assert set(pieces) - copied


def test_copy_pools_are_the_distinct_copied_tokens_and_the_most_frequent_of_them():
    exs = [T.Example([1, 2, 3, 4, 5, 6], [True] * 6, (1, 2, 3)), T.Example([9, 2, 3, 8], [True] * 4, (0, 1, 2))]
    pool, warm = T.copy_pools(exs, 2)
    assert pool == [2, 3, 4, 9] and warm == [2, 3]


def test_rich_batches_follow_the_plain_run_s_first_batches():
    ex = lambda n: T.Example([1] * n, [True] * n)  # noqa: E731
    plain = [ex(5 + i % 40) for i in range(300)]
    rich = [ex(7 + i % 30) for i in range(200)]
    only_plain, plain_batches = T.conversation_batches(plain, rich, 256, 0, 0)
    assert only_plain is plain and plain_batches == T.make_batches(plain, 256, random.Random(0))
    examples, batches = T.conversation_batches(plain, rich, 256, 0, 4)
    assert examples == plain + rich
    assert batches[:4] == plain_batches[:4]  # a run switching later starts exactly as a plain run
    later = [i for b in batches[4:] for i in b]
    assert sorted(later) == list(range(300, 500))  # then every rich example, once


def test_loss_weights_follow_collate_order(tok):
    convs = training_conversations(8, 0)
    exs = [T.encode(c, tok) for c in convs]
    idx = [3, 0, 5]
    ids, _, sel, targets = T.collate(exs, idx, tok.pad_id)
    w = T.loss_weights(exs, idx, sel, 5.0)
    assert w.shape == targets.shape
    expected = [5.0 if p in exs[i].copied else 1.0 for i in idx for p in range(1, len(exs[i].ids))
                if exs[i].loss_mask[p]]
    assert w.tolist() == expected


def test_decision_positions_are_each_turn_s_first_token_and_the_called_tool_s_name(tok):
    convs = training_conversations(60, 0)
    call = next(c for c in convs if c.kind == "weather")
    ex = T.encode(call, tok)
    first = [i for i in range(1, len(ex.ids)) if ex.loss_mask[i] and not ex.loss_mask[i - 1]]
    assert len(first) == 2  # the call turn, then the answer after the tool result
    assert tok.decode([ex.ids[first[0]]]) == "<|tool_calls_section_begin|>"
    named = [i for i in ex.decisions if i not in first]
    assert tok.decode([ex.ids[i] for i in named]) == "functions.get_weather:0"
    assert set(ex.decisions) == set(first) | set(named) and all(ex.loss_mask[i] for i in ex.decisions)
    chat = T.encode(next(c for c in convs if c.kind == "chat"), tok)  # no call: only each turn's first token
    assert chat.decisions and all(not chat.loss_mask[i - 1] for i in chat.decisions)
    # weighted with --decision-weight; a copied position keeps the value weight
    idx = [convs.index(call)]
    exs = [T.encode(c, tok) for c in convs]
    _, _, sel, _ = T.collate(exs, idx, tok.pad_id)
    w = T.loss_weights(exs, idx, sel, 5.0, decision_weight=3.0)
    expected = [5.0 if p in ex.copied else 3.0 if p in ex.decisions else 1.0
                for p in range(1, len(ex.ids)) if ex.loss_mask[p]]
    assert w.tolist() == expected and 3.0 in expected


def test_an_announcement_s_names_and_verdict_are_decisions_and_plain_corpora_keep_theirs(tok):
    plain = training_conversations(400, 4, rich=True, declare="balanced")
    said = training_conversations(400, 4, rich=True, declare="balanced", announce=True)
    seen = set()
    for a, b in zip(plain, said):
        ea, eb = T.encode(a, tok), T.encode(b, tok)
        if a.kind in ("chat", "chat_tools"):  # no announcement: the same positions
            assert ea.decisions == eb.decisions
            continue
        if b.kind == "two_exchanges":
            continue
        turns = [i for i in range(1, len(eb.ids)) if eb.loss_mask[i] and not eb.loss_mask[i - 1]]
        spelled = tok.decode([eb.ids[i] for i in eb.decisions if turns[0] <= i < turns[0] + 24
                              and eb.ids[i] != tok.tool_call_begin_id])
        verdict = "not available" if b.kind == "no_tool" else "available"
        names = " and ".join(dict.fromkeys(n for n, _ in b.calls)) or b.messages[-1]["content"].split()[0]
        assert spelled.startswith(f"{names} {'are' if ' and ' in names else 'is'} {verdict}"), spelled
        seen.add(verdict)
        assert len(eb.decisions) > len(ea.decisions)
    assert seen == {"available", "not available"}


def test_lowercase_spaces_keep_lowercase_words_whole_and_names_spelled_as_in_json(tmp_path):
    tok = T.build_tokenizer(training_conversations(300, 0), tmp_path, spaces="lowercase")
    pieces = [tok.decode([i]) for i in tok.encode("How is the weather in Salt Lake City today?")]
    assert " today" in pieces and " the" in pieces
    start, end = pieces.index(" in") + 1, pieces.index(" today")
    assert pieces[start] == " " and "".join(pieces[start + 1:end]) == "Salt Lake City"  # a bare space: a capital next
    assert pieces[pieces.index("Lake") - 1] == " "
    assert tok.encode("Salt Lake City") == tok.encode(" Salt Lake City")[1:]  # the call's JSON spells it the same
    with pytest.raises(T.K2Error, match="spaces must be one of"):
        T.bpe_training_pieces(["x"], "all")


def test_sdpa_training_attention_matches_the_runtime_s(tok):
    cfg = T.preset_config("tiny", {**T.MODEL_OVERRIDES, "max_position_embeddings": 4096})
    model = T.Transformer(cfg, attn_impl="sdpa").init_weights(scheme="fan_in")
    ex = [T.encode(c, tok) for c in training_conversations(4, 1)]
    ids, _, sel, _ = T.collate(ex, [0, 1, 2, 3], tok.pad_id)
    assert T.check_train_forward(model, ids, sel) < 1e-4
    assert model.layers[0].self_attn.attn_impl == "sdpa"  # the check leaves the training attention in place


def test_frozen_attention_is_left_as_it_was_while_the_rest_learns(tok):
    cfg = T.preset_config("tiny", {**T.MODEL_OVERRIDES, "max_position_embeddings": 4096})
    model = T.Transformer(cfg).init_weights(scheme="fan_in")
    ex = [T.encode(c, tok) for c in training_conversations(4, 1)]
    ids, _, sel, targets = T.collate(ex, [0, 1, 2, 3], tok.pad_id)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for trainable in (False, True):
        T.set_attention_trainable(model, trainable)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(T.train_forward(model, ids, sel), targets).backward()
        opt.step()
        moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        attn = {n for n in before if ".self_attn." in n}
        if not trainable:
            assert not moved & attn and "embed_tokens.weight" in moved and "lm_head.weight" in moved
    assert attn <= moved  # trainable again


@pytest.mark.slow
def test_a_run_is_reproducible(tmp_path):
    args = ["--steps", "3", "--copy-warmup-steps", "2", "--copy-rows", "4", "--value-weight", "3", "--rich-after", "1",
            "--decision-weight", "2", "--decision-after", "1", "--conversations", "400", "--eval-every", "2",
            "--eval-per-kind", "1", "--rich-declare", "balanced", "--freeze-attn", "1", "--train-attn", "sdpa",
            "--bpe-spaces", "lowercase", "--announce", "--answers", "value_first", "--value-topics", "--made-up-topics",
            "--copy-until", "0.01", "--copy-max-steps", "4", "--average-last", "2", "--average-every", "1",
            "--copy-kind", "induction", "--induction-pool", "pieces", "--induction-repeats", "0.5",
            "--no-stack-eval", "--no-docs"]
    figures = []
    for run in ("a", "b"):
        out = tmp_path / run
        T.main(args + ["--out", str(out / "model"), "--workdir", str(out / "work")])
        m = json.loads((out / "model" / "training" / "metrics.json").read_text())
        figures.append((m["float_weights_sha256_16"], m["eval"], m["final_train_loss_mean_100"]))
        assert m["command_args"] == " ".join(a for a in args if a != "--no-docs")  # where files go: not kept
        assert m["copy_warmup_steps"] == 4 and m["copy_until"] == 0.01  # no head in 4 steps: stage 1 ran to the cap
    assert figures[0] == figures[1]


def test_copy_until_ends_stage_one_once_the_recent_copying_loss_is_low_or_at_the_cap():
    args = T.parse_args(["--copy-warmup-steps", "3", "--copy-until", "1.0", "--copy-max-steps", "200"])
    log = [{"copy_loss": 5.0}] * 100 + [{"copy_loss": 0.3}] * (T.COPY_UNTIL_WINDOW - 10)
    assert not T.stage_one_done(log, args)  # the window's mean: (10 * 5.0 + 40 * 0.3) / 50 = 1.24
    assert T.stage_one_done(log + [{"copy_loss": 0.3}] * 5, args)  # (5 * 5.0 + 45 * 0.3) / 50 = 0.77
    assert T.stage_one_done([{"copy_loss": 5.0}] * 200, args)  # the cap
    assert T.stage_one_done([{"copy_loss": 5.0}] * 3, T.parse_args(["--copy-warmup-steps", "3"]))  # off


@pytest.mark.parametrize("until, stage_one", [("100", 2), ("0.001", 5)])
def test_stage_two_starts_where_stage_one_ended(tok, tmp_path, until, stage_one):
    """The conversations, their lr warm-up and the switches all count from the step stage 1 really ended."""
    cfg = T.preset_config("tiny", {**T.MODEL_OVERRIDES, "max_position_embeddings": 4096})
    model = T.Transformer(cfg).init_weights(scheme="fan_in")
    ex = [T.encode(c, tok) for c in training_conversations(60, 2)]
    args = T.parse_args(["--copy-warmup-steps", "2", "--copy-until", until, "--copy-max-steps", "5", "--steps", "3",
                         "--copy-kind", "induction", "--copy-rows-warmup", "4", "--copy-rows", "2",
                         "--batch-tokens", "1024", "--eval-every", "100"])
    args.workdir = tmp_path
    log = T.train(model, ex, ex[:2], tok, args, tmp_path / "log.jsonl")
    assert [e["stage"] for e in log] == [1] * stage_one + [2] * 3
    assert "loss" not in log[stage_one - 1] and "loss" in log[stage_one]
    assert log[stage_one]["lr"] == pytest.approx(T.lr_at(stage_one, args, stage_one))
    assert log[stage_one]["lr"] == pytest.approx(args.lr / args.warmup)  # stage 2's own warm-up, first step
    assert "heldout_loss" in log[-1]  # the last step is known to be the last


def test_copy_rows_steps_keeps_the_copying_rows_for_the_first_conversation_steps_only(tok, tmp_path, capsys):
    cfg = T.preset_config("tiny", {**T.MODEL_OVERRIDES, "max_position_embeddings": 4096})
    model = T.Transformer(cfg).init_weights(scheme="fan_in")
    ex = [T.encode(c, tok) for c in training_conversations(60, 2)]
    args = T.parse_args(["--copy-warmup-steps", "2", "--steps", "4", "--copy-rows-steps", "1", "--copy-kind",
                         "induction", "--copy-rows-warmup", "4", "--copy-rows", "2", "--batch-tokens", "1024"])
    args.workdir = tmp_path
    log = T.train(model, ex, ex[:2], tok, args, tmp_path / "log.jsonl")
    assert [("copy_loss" in e, "loss" in e) for e in log] == [(True, False)] * 2 + [(True, True)] + [(False, True)] * 3
    with pytest.raises(SystemExit) as e:
        T.parse_args(["--steps", "4", "--copy-rows-steps", "1"])
    assert e.value.code == 2 and "--copy-rows-steps 1: limits the stage-2 copying rows; give --copy-rows" in \
        capsys.readouterr().err


def test_averaged_steps_are_every_kth_of_the_last_n_counted_back_from_the_last():
    args = T.parse_args(["--steps", "10", "--average-last", "5", "--average-every", "2"])
    assert [s for s in range(1, 13) if T.averaged_step(s, 12, args)] == [8, 10, 12]
    assert not any(T.averaged_step(s, 12, T.parse_args(["--steps", "10"])) for s in range(1, 13))


def test_a_snapshot_interval_below_one_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        T.parse_args(["--steps", "10", "--average-last", "5", "--average-every", "0"])
    assert e.value.code == 2 and "--average-every 0: must be at least 1" in capsys.readouterr().err


def test_weight_average_is_the_mean_of_what_was_added():
    avg = T.WeightAverage()
    with pytest.raises(T.K2Error, match="no weights to average"):
        avg.mean()
    states = [{"w": torch.full((2, 3), float(i)), "b": torch.tensor([i, -i], dtype=torch.float32)} for i in (1, 2, 6)]
    for s in states:
        avg.add(s)
    assert torch.equal(states[0]["w"], torch.ones(2, 3))  # the first state is copied, not summed into
    mean = avg.mean()
    assert torch.equal(mean["w"], torch.full((2, 3), 3.0)) and torch.equal(mean["b"], torch.tensor([3.0, -3.0]))


def test_average_last_ships_the_mean_of_the_snapshots_and_keeps_the_last_step_s(tok, tmp_path, monkeypatch):
    cfg = T.preset_config("tiny", {**T.MODEL_OVERRIDES, "max_position_embeddings": 4096})
    model = T.Transformer(cfg).init_weights(scheme="fan_in")
    ex = [T.encode(c, tok) for c in training_conversations(60, 2)]
    args = T.parse_args(["--steps", "5", "--average-last", "4", "--average-every", "2", "--batch-tokens", "1024",
                         "--warmup", "1"])
    args.workdir = tmp_path
    added = []
    add = T.WeightAverage.add
    monkeypatch.setattr(T.WeightAverage, "add", lambda self, s: (added.append({k: v.clone() for k, v in s.items()}),
                                                                  add(self, s)))
    T.train(model, ex, ex[:2], tok, args, tmp_path / "log.jsonl")
    assert len(added) == 2  # after steps 3 and 5
    last = torch.load(tmp_path / "float_weights_last.pt")
    assert all(torch.equal(last[k], added[-1][k]) for k in last)
    assert not torch.equal(added[0]["lm_head.weight"], added[1]["lm_head.weight"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, (added[0][k] + added[1][k]) / 2), k


def test_copy_until_without_a_copying_stage_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        T.parse_args(["--copy-until", "1.0"])
    assert e.value.code == 2 and "--copy-until 1: extends stage 1; give --copy-warmup-steps" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        T.parse_args(["--copy-warmup-steps", "3", "--copy-until", "-1"])
    assert e.value.code == 2 and "--copy-until -1: a copying loss is not negative" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--rich-after", "--decision-after", "--freeze-attn", "--average-last"])
@pytest.mark.parametrize("value", ["-1", "3"])
def test_a_switch_outside_the_conversation_steps_is_refused(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        T.parse_args(["--steps", "3", flag, value])
    assert e.value.code == 2 and f"{flag} {value}: must be between 0 and --steps (3)" in capsys.readouterr().err


def test_induction_options_without_induction_rows_or_out_of_range_are_refused(capsys):
    for argv in (["--induction-repeats", "0.5"], ["--induction-pool", "pieces"]):
        with pytest.raises(SystemExit) as e:
            T.parse_args(argv)
        assert e.value.code == 2 and "shape induction rows; give --copy-kind induction" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        T.parse_args(["--copy-kind", "induction", "--induction-repeats", "1.5"])
    assert e.value.code == 2 and "--induction-repeats 1.5: a share, between 0 and 1" in capsys.readouterr().err


def test_declarations_of_the_rich_corpus_without_it_are_refused(capsys):
    with pytest.raises(SystemExit) as e:
        T.parse_args(["--steps", "3", "--rich-declare", "many"])
    assert e.value.code == 2 and "--rich-declare many: the declarations are the rich corpus's" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        T.parse_args(["--steps", "3", "--announce"])
    assert e.value.code == 2 and "--announce: the announcements are the rich corpus's" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        T.parse_args(["--steps", "3", "--answers", "value_first"])
    assert e.value.code == 2 and "--answers value_first: the answer order is the rich corpus's" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        T.parse_args(["--steps", "3", "--made-up-topics"])
    assert e.value.code == 2 and "--made-up-topics: the topics are the rich corpus's" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # nothing to weigh them by
        T.parse_args(["--steps", "3", "--rich-after", "1", "--value-topics"])
    assert e.value.code == 2 and "--value-topics: weighs the rich corpus's topics" in capsys.readouterr().err
