"""The k2-tiny corpus: seeded, valid K2 chat data, byte-exact with serving prompts, held-out pools kept out."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest

from k2trt.chat import render_chat, validate_messages
from k2trt.corpus import (
    _CHAT_HELDOUT,
    _CHAT_OPENERS,
    _NO_TOOL_REPLY,
    _SMALL_TALK,
    ANNOUNCEMENT,
    EVAL_KINDS,
    HELDOUT_CITIES,
    HELDOUT_ONLY_WEATHER_WORDS,
    HELDOUT_WEATHER,
    RICH_TRAIN_CITIES,
    TOOLS,
    TRAIN_CITIES,
    TRAIN_MIX,
    TRAIN_WEATHER,
    announcement,
    assistant_token_mask,
    calculate,
    city_names,
    conversations,
    convert_units,
    eval_conversations,
    seed_example,
    training_conversations,
    varied_chat_user,
)
from k2trt.errors import K2Error
from k2trt.tokenizer import K2_NAMED_SPECIAL_OFFSETS, K2Tokenizer, train_bpe

# The Kimi-K2-Instruct model card's tool-calling example, written out here independently of k2trt.corpus.
CARD_TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Retrieve current weather information. Call this when the user asks about the weather.",
        "parameters": {
            "type": "object",
            "required": ["city"],
            "properties": {"city": {"type": "string", "description": "Name of the city"}},
        },
    },
}]
CARD_MESSAGES = [
    {"role": "system", "content": "You are Kimi, an AI assistant created by Moonshot AI."},
    {"role": "user", "content": "What's the weather like in Beijing today? Let's check using the tool."},
]


@pytest.fixture(scope="module")
def train_convs():
    return training_conversations(1500, seed=0)


@pytest.fixture(scope="module")
def small_tokenizer(train_convs) -> K2Tokenizer:
    """A small BPE on corpus text (specials cut out), as the training script builds it."""
    pat = re.compile("|".join(re.escape(n) for n in K2_NAMED_SPECIAL_OFFSETS.values()))
    texts = [render_chat(c.messages, tools=c.tools, add_generation_prompt=False).text for c in train_convs[:200]]
    return K2Tokenizer(train_bpe([p for t in texts for p in pat.split(t) if p], 600))


def test_same_seed_same_corpus_other_seed_other_corpus():
    a, b, c = training_conversations(50, 3), training_conversations(50, 3), training_conversations(50, 4)
    assert a == b
    assert a != c
    assert eval_conversations(2, 1) == eval_conversations(2, 1)


def test_seed_example_is_the_model_card_one():
    tools, messages = seed_example()
    assert tools == CARD_TOOLS
    assert messages == CARD_MESSAGES
    # byte-exact declaration as K2's template writes it (compact JSON, keys in the card's order)
    text = render_chat(messages, tools=tools).text
    assert text.startswith('<|im_system|>tool_declare<|im_middle|>[{"type":"function","function":{"name":'
                           '"get_weather","description":"Retrieve current weather information. Call this when the '
                           'user asks about the weather.","parameters":{"type":"object","required":["city"],'
                           '"properties":{"city":{"type":"string","description":"Name of the city"}}}}}]<|im_end|>')


def test_the_card_shape_is_common_in_training(train_convs):
    card = [c for c in train_convs if c.tools == CARD_TOOLS and c.prompt_messages[0] == CARD_MESSAGES[0]
            and c.prompt_messages[1]["content"].endswith("today? Let's check using the tool.")]
    assert len(card) > 0.05 * len(train_convs)
    for c in card:
        assert [m["role"] for m in c.messages] == ["system", "user", "assistant", "tool", "assistant"]
    # the card's client names the tool in its result message; plain OpenAI clients leave it out
    names = Counter(c.messages[3].get("name") for c in card)
    assert set(names) == {"get_weather", None} and names["get_weather"] > 0.7 * len(card)


def test_kinds_follow_the_mix(train_convs):
    counts = Counter(c.kind for c in train_convs)
    for kind, share in TRAIN_MIX.items():
        assert counts[kind] / len(train_convs) == pytest.approx(share, abs=0.03), kind


def test_conversations_are_valid_and_consistent(train_convs):
    for c in train_convs[:400]:
        validate_messages(c.messages, c.tools)
        declared = {t["function"]["name"] for t in c.tools or ()}
        assert c.messages[-1]["role"] == "assistant" and c.messages[-1]["content"]
        assert c.messages[c.prompt_len - 1]["role"] == "user"
        for m in c.messages:
            for call in m.get("tool_calls") or ():
                assert call["function"]["name"] in declared  # only declared tools are ever called
        if c.calls:
            call_msg = c.messages[c.prompt_len]
            got = [(x["function"]["name"], json.loads(x["function"]["arguments"])) for x in call_msg["tool_calls"]]
            assert got == list(c.calls)
            # results are what the local tools return for those arguments, in order, and the answer quotes them
            tool_msgs = c.messages[c.prompt_len + 1: -1]
            assert [json.loads(m["content"]) for m in tool_msgs] == list(c.results)
            assert all(v in c.final_answer for v in c.answer_values)
        else:
            assert not any(m.get("tool_calls") for m in c.messages[c.prompt_len:])


def test_call_ids_count_across_the_conversation(train_convs):
    for c in train_convs:
        ids = [call["id"] for m in c.messages for call in m.get("tool_calls") or ()]
        assert ids == [f"functions.{i.split('.', 1)[1].rsplit(':', 1)[0]}:{k}" for k, i in enumerate(ids)]
        answered = [m["tool_call_id"] for m in c.messages if m["role"] == "tool"]
        assert answered == ids


def test_no_tool_requests_are_for_undeclared_tools(train_convs):
    wanted = {"weather": "get_weather", "time": "get_time", "calculate": "calculate", "convert": "convert_units"}
    for c in (c for c in train_convs if c.kind == "no_tool"):
        reply = c.final_answer
        assert reply.startswith("Sorry")
        declared = {t["function"]["name"] for t in c.tools or ()}
        # the apology names the missing capability; that tool is not declared
        missing = [name for name in wanted.values() if name not in declared]
        assert missing


def test_prompt_is_a_prefix_of_the_training_text(train_convs, small_tokenizer):
    """Training text == serving prompt: rendering the conversation up to the user turn with a generation prompt
    gives exactly the first ids of the full rendering, and the next ids are the assistant's (loss) tokens."""
    tok = small_tokenizer
    for c in train_convs[:150]:
        full = render_chat(c.messages, tools=c.tools, add_generation_prompt=False, tokenizer=tok).ids
        prompt = render_chat(c.prompt_messages, tools=c.tools, add_generation_prompt=True, tokenizer=tok).ids
        assert full[: len(prompt)] == prompt
        mask = assistant_token_mask(full, tok)
        assert prompt[-1] == tok.im_middle_id and not mask[len(prompt) - 1]  # the header is context, not loss
        turn_end = full.index(tok.im_end_id, len(prompt))
        assert all(mask[len(prompt): turn_end + 1])  # the whole first assistant turn, <|im_end|> included
        assert turn_end + 1 == len(full) or not mask[turn_end + 1]  # then a tool result or nothing


def test_assistant_mask_covers_exactly_the_assistant_turns(small_tokenizer):
    tok = small_tokenizer
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]
    ids = render_chat(msgs, tokenizer=tok, add_generation_prompt=False).ids
    mask = assistant_token_mask(ids, tok)
    masked = tok.decode([i for i, m in zip(ids, mask) if m])
    assert masked == "Hello!<|im_end|>Goodbye.<|im_end|>"


def test_heldout_pools_never_reach_training(train_convs):
    assert not set(TRAIN_CITIES) & set(HELDOUT_CITIES)
    assert not set(TRAIN_WEATHER) & set(HELDOUT_WEATHER)
    text = "\n".join(json.dumps(c.messages, ensure_ascii=False) for c in train_convs)
    for city in HELDOUT_CITIES:
        assert not re.search(rf"\b{re.escape(city)}\b", text), city
    for w in HELDOUT_WEATHER:
        assert f'"weather\\": \\"{w}\\"' not in text, w
    assert HELDOUT_ONLY_WEATHER_WORDS >= {"hazy", "sleet", "hail", "blizzard"}
    for w in HELDOUT_ONLY_WEATHER_WORDS:
        assert not re.search(rf"(?i)\b{w}\b", text), w
    heldout = eval_conversations(20, 1, train_names=city_names(train_convs))
    assert not city_names(heldout) & city_names(train_convs)
    # (the model card's example, first, is the one case with training values: Beijing, Sunny)
    assert heldout[0].kind == "seed"
    assert all(r["weather"] in HELDOUT_WEATHER for c in heldout[1:] for r in c.results if "weather" in r)


def test_eval_set_shape():
    convs = eval_conversations(3, 1)
    assert convs[0].kind == "seed" and convs[0].prompt_messages == CARD_MESSAGES and convs[0].tools == CARD_TOOLS
    assert Counter(c.kind for c in convs[1:]) == {k: 3 for k in EVAL_KINDS}
    for c in convs:
        assert c.prompt_messages[-1]["role"] == "user"
        assert bool(c.calls) == (c.kind not in ("chat", "chat_tools", "no_tool"))


@pytest.mark.parametrize("expr, value", [
    ("17 * 23", 391), ("(1 + 2) * 3", 9), ("7 / 2", 3.5), ("10 / 4 * 2", 5), ("1 / 3", 0.3333), ("2 - 5", -3),
    ("139.6 - 903", -763.4),
])
def test_calculate(expr, value):
    assert calculate(expr) == value
    assert type(calculate(expr)) is type(value)


@pytest.mark.parametrize("bad", ["__import__('os')", "2 ** 10", "1 / 0", "x + 1", ""])
def test_calculate_refuses_anything_else(bad):
    with pytest.raises(K2Error):
        calculate(bad)


def test_convert_units():
    assert convert_units(0, "c", "f") == 32.0
    assert convert_units(212, "f", "c") == 100.0
    assert convert_units(1, "km", "mi") == 0.62
    assert convert_units(1, "mi", "km") == 1.61
    assert convert_units(10, "kg", "lb") == 22.05
    with pytest.raises(K2Error, match="cannot convert"):
        convert_units(1, "km", "kg")


def test_tool_runs_match_declarations():
    for name, tool in TOOLS.items():
        decl = tool.declaration()["function"]
        assert decl["name"] == name
        assert set(decl["parameters"]["required"]) <= set(decl["parameters"]["properties"])
    assert TOOLS["get_weather"].run({"city": "Beijing"}, {"weather": "Sunny"}) == {"weather": "Sunny"}
    assert TOOLS["calculate"].run({"expression": "6 * 7"}, {}) == {"result": 42}
    assert TOOLS["convert_units"].run({"value": 100, "from_unit": "c", "to_unit": "f"}, {}) == {"result": 212.0}


def test_copying_is_forced_by_made_up_values(train_convs):
    """Most city names and half the weather values in training are made up, so recall cannot stand in for copying."""
    cities = [c.calls[0][1]["city"] for c in train_convs if c.kind in ("weather", "time")]
    assert sum(c not in TRAIN_CITIES for c in cities) > 0.4 * len(cities)
    weathers = [r["weather"] for c in train_convs for r in c.results if "weather" in r]
    made_up = [w for w in weathers if w not in TRAIN_WEATHER]
    assert 0.35 * len(weathers) < len(made_up) < 0.65 * len(weathers)
    assert len(set(made_up)) > 0.8 * len(made_up)  # nearly all distinct


def test_rich_training_values_have_free_multi_word_shapes(train_convs):
    """Rich training names and conditions of two or three words whose first word is not a known prefix or
    modifier (held-out ``Phnom Penh``, ``Icy fog`` have that shape); plain training and held-out values have none."""
    from k2trt.corpus import _PREFIXES, _WEATHER_MODIFIERS

    prefixes = {p.strip() for p in _PREFIXES if p} | {m.strip() for m in _WEATHER_MODIFIERS if m}

    def free(convs):
        cities = [c.calls[0][1]["city"] for c in convs if c.kind in ("weather", "time")]
        weathers = [r["weather"] for c in convs for r in c.results if "weather" in r]
        return ([c for c in cities if " " in c and c.split()[0] not in prefixes and c not in RICH_TRAIN_CITIES],
                [w for w in weathers if " " in w and w.split()[0] not in prefixes and w not in TRAIN_WEATHER],
                len(cities), len(weathers))

    rich = training_conversations(1500, seed=0, rich=True)
    cities, weathers, n_c, n_w = free(rich)
    assert 0.1 * n_c < len(cities) < 0.3 * n_c and any(len(c.split()) == 3 for c in cities)
    # every word capitalised: a lowercase word after a name is never part of it (run U's names ran on)
    assert all(w[0].isupper() for c in cities for w in c.split())
    assert 0.1 * n_w < len(weathers) < 0.3 * n_w
    assert free(train_convs)[:2] == ([], [])
    assert not city_names(rich) & set(HELDOUT_CITIES)
    assert not {r["weather"] for c in rich for r in c.results if "weather" in r} & set(HELDOUT_WEATHER)
    heldout = eval_conversations(20, 1)
    assert all(n.split()[0] in prefixes for n in city_names(heldout) if " " in n and n not in HELDOUT_CITIES)
    with pytest.raises(K2Error, match="training-only"):
        conversations(3, 1, "heldout", rich=True)


def test_many_declares_more_tools_beside_the_needed_ones(train_convs):
    def declared(convs, kind):
        return [len(c.tools or ()) for c in convs if c.kind == kind]

    more = training_conversations(1500, seed=0, rich=True, declare="many")
    for kind in ("weather", "convert", "no_tool"):
        plain, extra = declared(train_convs, kind), declared(more, kind)
        assert sum(extra) / len(extra) > sum(plain) / len(plain) + 0.5, kind
    requests = [c for c in more if c.kind in ("time", "calculate", "convert")]
    assert sum(len(c.tools) == 1 for c in requests) < 0.2 * len(requests)  # the needed tool alone: rare
    assert all(c.calls[0][0] in {t["function"]["name"] for t in c.tools} for c in requests)
    with pytest.raises(K2Error, match="training-only"):
        conversations(3, 1, "heldout", declare="many")
    with pytest.raises(K2Error, match="declare must be one of"):
        training_conversations(3, declare="most")


def test_balanced_declarations_leave_only_the_needed_name_to_tell_a_call_from_an_apology():
    convs = training_conversations(3000, seed=0, rich=True, declare="balanced")
    counts = {True: Counter(), False: Counter()}  # undeclared-tool request? -> number of tools declared
    for c in convs:
        if c.kind in ("time", "calculate", "convert") or c.kind == "no_tool" and c.tools:
            counts[c.kind == "no_tool"][len(c.tools)] += 1
    for undeclared, by_count in counts.items():  # uniform over 1-4 (tool requests) and 1-3 (undeclared ones)
        sizes = range(1, 4 if undeclared else 5)
        assert set(by_count) == set(sizes)
        assert max(by_count.values()) < 1.3 * min(by_count.values()), (undeclared, by_count)
    for c in convs:
        names = {t["function"]["name"] for t in c.tools or ()}
        if c.kind == "no_tool" and names:
            assert c.messages[-1]["content"] in {_NO_TOOL_REPLY[n] for n in TOOLS if n not in names}
        elif c.calls:
            assert {name for name, _ in c.calls} <= names
    kinds = Counter(c.kind for c in convs)
    assert kinds["no_tool"] > 1.5 * kinds["two_calls"]  # twice the usual share (20% against 11%)


def test_announcements_name_the_needed_tool_before_the_call_or_the_apology_and_change_no_value():
    plain = training_conversations(1500, seed=3, rich=True, declare="balanced")
    said = training_conversations(1500, seed=3, rich=True, declare="balanced", announce=True)
    earlier = Counter()
    for a, b in zip(plain, said, strict=True):
        # the same draws: only assistant text differs
        assert (a.kind, a.tools, a.calls, a.results, a.answer_values) == (b.kind, b.tools, b.calls, b.results,
                                                                          b.answer_values)
        others = [[m for m in c.messages if m["role"] != "assistant"] for c in (a, b)]
        assert others[0] == others[1]
        names = {t["function"]["name"] for t in b.tools or ()}
        if b.calls:
            called = [name for name, _ in b.calls]
            text = b.messages[b.prompt_len]["content"]
            assert text == announcement(called, declared=True)
            assert ANNOUNCEMENT.match(text).group(0).endswith(" available")
            assert text.startswith(called[0]) and set(called) <= names
        elif b.kind == "no_tool":
            text = b.messages[-1]["content"]
            want = re.match(r"(\w+) is not available here, so I cannot [a-z ]+\.$", text).group(1)
            assert want not in names and text == announcement([want], declared=False)
            assert ANNOUNCEMENT.match(text).group(0).endswith(" not available")
        else:  # tool-free replies are as before, and none reads as an announcement
            assert a.messages == b.messages and not ANNOUNCEMENT.match(b.messages[-1]["content"])
        for m in b.prompt_messages:  # an earlier exchange's call
            if m.get("tool_calls"):
                earlier[m["content"] is not None] += 1
    assert earlier[True] > 10 and earlier[False] > 10  # half the earlier exchanges announce, as a client sends
    assert announcement(["get_weather", "get_time", "get_weather"], True) == \
        "get_weather and get_time are available, so I will call them."
    with pytest.raises(K2Error, match="training-only"):
        conversations(3, 1, "heldout", announce=True)


@pytest.mark.parametrize("order", ["value_first", "joined"])
def test_value_first_answers_quote_the_value_before_the_city_and_change_no_draw(order):
    mixed = training_conversations(1500, seed=3, rich=True, declare="balanced")
    first = training_conversations(1500, seed=3, rich=True, declare="balanced", answers=order)
    joined = 0
    changed = Counter()
    for a, b in zip(mixed, first, strict=True):
        # the same draws: only the answers to weather and time results differ
        assert (a.kind, a.tools, a.calls, a.results, a.answer_values) == \
            (b.kind, b.tools, b.calls, b.results, b.answer_values)
        for ma, mb in zip(a.messages, b.messages, strict=True):
            if ma != mb:
                assert mb["role"] == "assistant" and not mb.get("tool_calls")
                changed[a.kind] += 1
        for (name, args), res in zip(b.calls, b.results):
            if name in ("get_weather", "get_time"):
                value = res["weather" if name == "get_weather" else "time"]
                answer = b.final_answer
                # each quoted value comes before its city (two cities: each sentence on its own)
                sentence = next(s for s in re.split(r"(?<=\.) ", answer) if value in s and args["city"] in s)
                assert sentence.index(value) < sentence.index(args["city"]), answer
                if "temperature" in res:
                    # joined: the temperature follows the weather inside its sentence, before the city
                    together = f"{value} and {res['temperature']} in {args['city']}" in sentence
                    assert together == (order == "joined"), answer
                    joined += together
    assert changed["weather"] > 50 and changed["time"] > 20 and changed["two_calls"] > 20
    assert joined > 30 if order == "joined" else joined == 0
    assert not changed.keys() - {"weather", "time", "two_calls", "two_exchanges"}
    with pytest.raises(K2Error, match="answers must be one of"):
        training_conversations(3, answers="city_first")
    with pytest.raises(K2Error, match="training-only"):
        conversations(3, 1, "heldout", answers="value_first")


def test_conversations_record_the_chat_topics_their_replies_repeat():
    convs = training_conversations(400, seed=5)
    topical = [c for c in convs if c.topics]
    assert len(topical) > 20
    for c in convs:
        replies = " ".join(m["content"] or "" for m in c.messages if m["role"] == "assistant")
        for t in c.topics:
            assert f"Happy to talk about {t}!" in replies
        if not c.topics:
            assert "Happy to talk about" not in replies


def test_made_up_topics_replace_a_third_of_the_topics_and_change_no_other_draw():
    listed = training_conversations(1500, seed=3, rich=True)
    made = training_conversations(1500, seed=3, rich=True, made_up_topics=True)
    swapped = kept = 0
    for a, b in zip(listed, made, strict=True):
        assert (a.kind, a.tools, a.calls, a.results, a.answer_values, a.cities) == \
            (b.kind, b.tools, b.calls, b.results, b.answer_values, b.cities)
        assert len(a.topics) == len(b.topics)
        for ta, tb in zip(a.topics, b.topics):
            if ta == tb:
                kept += 1
                continue
            swapped += 1
            assert tb.isalpha() and tb.islower() and tb not in ("whales", "autumn")
            assert any(f"Happy to talk about {tb}!" in (m["content"] or "") for m in b.messages)
            assert any(tb in m["content"] for m in b.messages if m["role"] == "user")  # the user asked about it
    assert 0.2 < swapped / (swapped + kept) < 0.45
    with pytest.raises(K2Error, match="training-only"):
        conversations(3, 1, "heldout", made_up_topics=True)


def test_varied_chat_rewords_a_third_of_the_tool_free_turns_and_changes_no_other_draw():
    plain = training_conversations(1500, seed=3, rich=True, announce=True)
    varied = training_conversations(1500, seed=3, rich=True, announce=True, varied_chat=True)
    changed = chats = 0
    for a, b in zip(plain, varied, strict=True):
        assert (a.kind, a.tools, a.calls, a.results, a.answer_values, a.cities, a.topics) == \
            (b.kind, b.tools, b.calls, b.results, b.answer_values, b.cities, b.topics)
        chats += a.kind in ("chat", "chat_tools")
        if a.messages == b.messages:
            continue
        changed += 1
        diff = [(x, y) for x, y in zip(a.messages, b.messages, strict=True) if x != y]
        assert diff and all(x["role"] in ("user", "assistant") and x["role"] == y["role"] for x, y in diff)
        users = [y["content"] for x, y in diff if y["role"] == "user"]
        assert users and not set(users) & set(_CHAT_HELDOUT)  # reworded turns are never a held-out prompt
        replies = [y["content"] for x, y in diff if y["role"] == "assistant"]
        assert all(r == _SMALL_TALK[1] for r in replies)  # only small talk brings a reply of its own
        for t in b.topics:  # a topic's reply still repeats it, and the reworded request still asks about it
            assert any(f"Happy to talk about {t}!" in (m["content"] or "") for m in b.messages)
    assert 0.2 < changed / chats < 0.6  # chats plus the small talk before two-exchange requests
    with pytest.raises(K2Error, match="training-only"):
        conversations(3, 1, "heldout", varied_chat=True)


def test_varied_chat_openers_keep_the_sentence_readable():
    rng = random.Random(0)
    seen = Counter()
    for _ in range(400):
        user, reply = varied_chat_user(rng, "I love chess!" if rng.random() < 0.5 else "Who are you?", "r", "chess")
        opener = next((o for o in _CHAT_OPENERS if o and user.startswith(o)), "")
        rest = user[len(opener):]
        seen[opener] += 1
        if re.match(r"I\b", rest):  # "I" keeps its capital after "Hey, "
            assert rest in ("I love chess!", "I'd like to hear about chess.")
        else:
            assert rest[0].islower() if opener.endswith(", ") else rest[0].isupper(), user
        assert reply == "r"  # a topic question's reply stays
    assert set(seen) == set(_CHAT_OPENERS)
