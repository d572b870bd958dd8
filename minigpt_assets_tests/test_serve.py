"""`minigpt serve`: the batching engine decodes exactly what `generate` decodes, the OpenAI API answers the
official `openai` client (plain and streamed), bad requests are HTTP 400 with an OpenAI error object while the
server keeps serving, concurrent streams all complete, and the chat page works in a real browser."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch

from minigpt_assets.models import build_model, make_config
from minigpt_assets.models.interop import save_model
from minigpt_assets.models.transformer import generate
from minigpt_assets.serve.engine import Engine, Params, Request
from minigpt_assets_tests.conftest import REPO
from minigpt_assets_tests.test_ui import browser, _free_port  # noqa: F401 - the fixture

TINY = {"family": "llama", "vocab_size": 384, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
        "max_seq_len": 96}


class _Ids:
    def decode(self, ids):
        return " ".join(map(str, ids))


def test_incremental_detokenization_settles_the_same_text_as_one_decode():
    """Streaming decodes only the tokens since the last settled point; the settled text is always a prefix of the
    whole answer's decode, never holds half a character, and ends equal to it (byte-level BPE, where characters
    such as 'é' and '日' span several tokens)."""
    from types import SimpleNamespace

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["plain words and more words"] * 20, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    text = "café 日本語 words, naïve 🙂 more words"
    ids = tok.encode(text).ids
    assert len(ids) > len(text.split())  # the rare characters are split over byte tokens
    eng = SimpleNamespace(tok=tok)
    req = Request([1], Params(max_tokens=100), lambda *a: None)
    for i in ids:
        req.ids.append(i)
        settled = Engine._settle(eng, req)
        whole = tok.decode(req.ids)
        assert whole.startswith(settled) and "\ufffd" not in settled
        assert len(whole.rstrip("\ufffd")) - len(settled) <= 4  # only an unfinished character waits
    assert req.text == text


def test_continuous_batching_decodes_what_generate_decodes():
    """Eight requests through a batch of four: rows of different lengths join as others leave; greedy answers equal
    one-at-a-time `generate`, and the batch took fewer steps than the requests' tokens."""
    torch.manual_seed(0)
    model = build_model(make_config({**TINY, "vocab_size": 64}), device="cpu").eval()
    eng = Engine(model, _Ids(), {0}, max_batch=4)
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15], [3], [20, 21], [30, 31, 32, 33], [40] * 10, [41, 42, 43],
               [44, 45, 46]]  # three of length 3: prefilled as one batch, and decoded without a mask while alone
    done, all_done = {}, threading.Event()

    def emitter(i):
        def emit(kind, payload):
            if kind == "done":
                done[i] = payload
                if len(done) == len(prompts):
                    all_done.set()
        return emit

    for i, p in enumerate(prompts):
        eng.submit(Request(p, Params(max_tokens=12 + i, temperature=0.0), emitter(i)))
    eng.start()  # after the submissions: the first admission takes four at once
    assert all_done.wait(60)
    eng.close()
    for i, p in enumerate(prompts):
        ref = generate(model, torch.tensor([p]), 12 + i, 0.0, eos_token_id=0)[0, len(p):].tolist()
        ref = ref[:ref.index(0)] if 0 in ref else ref
        assert done[i]["text"] == " ".join(map(str, ref)) and done[i]["completion_tokens"] == len(ref)
    assert eng.steps < sum(d["completion_tokens"] for d in done.values()) * 0.6


def test_rows_of_one_length_decode_without_a_mask_and_equal_generate():
    torch.manual_seed(1)
    model = build_model(make_config({**TINY, "vocab_size": 64}), device="cpu").eval()
    eng = Engine(model, _Ids(), {0}, max_batch=3)
    prompts, done, ended = [[1, 2, 3], [4, 5, 6], [7, 8, 9]], {}, threading.Event()
    for i, p in enumerate(prompts):
        eng.submit(Request(p, Params(max_tokens=10 + 3 * i, temperature=0.0),
                           lambda k, v, i=i: (done.__setitem__(i, v), len(done) == 3 and ended.set())
                           if k == "done" else None))
    eng.start()
    assert ended.wait(60)
    eng.close()
    for i, p in enumerate(prompts):
        ref = generate(model, torch.tensor([p]), 10 + 3 * i, 0.0, eos_token_id=0)[0, 3:].tolist()
        assert done[i]["text"] == " ".join(map(str, ref[:ref.index(0)] if 0 in ref else ref))


def test_requests_submitted_together_are_admitted_together(monkeypatch):
    """A group given to `submit_all` is admitted whole, even while it is still being queued (slowly here): rows of
    one prompt length then decode as one batch without a mask. Requests that arrive apart join the running batch
    with other lengths, under a mask."""
    torch.manual_seed(2)
    model = build_model(make_config({**TINY, "vocab_size": 64}), device="cpu").eval()
    eng = Engine(model, _Ids(), set(), max_batch=6)
    masked = []
    begin = eng.cache.begin_step

    def counting():
        begin()
        masked.append(eng.cache.mask is not None)
    monkeypatch.setattr(eng.cache, "begin_step", counting)
    put = eng.waiting.put
    monkeypatch.setattr(eng.waiting, "put", lambda r: (time.sleep(0.005), put(r)))  # a slow arrival
    eng.start()
    for together in (True, False):
        masked.clear()
        left = threading.Semaphore(0)
        reqs = [Request([1, 2, 3], Params(max_tokens=80, temperature=0.0),
                        lambda k, _v: left.release() if k == "done" else None) for _ in range(6)]
        if together:
            eng.submit_all(reqs)
        else:  # arrivals apart in time: later rows join a running batch with other lengths
            for r in reqs:
                time.sleep(0.005)
                eng.submit(r)
        for _ in reqs:
            assert left.acquire(timeout=60)
        assert (not any(masked)) if together else any(masked), (together, len(masked), sum(masked))
    eng.close()


def test_a_failing_prefill_answers_its_request_and_the_batch_goes_on():
    torch.manual_seed(0)
    model = build_model(make_config({**TINY, "vocab_size": 64}), device="cpu").eval()
    eng = Engine(model, _Ids(), set(), max_batch=4).start()
    got, ended = {}, threading.Event()

    def emitter(name):
        def emit(kind, payload):
            if kind in ("done", "error"):
                got[name] = (kind, payload)
                if len(got) == 2:
                    ended.set()
        return emit

    eng.submit(Request([1, 2, 3], Params(max_tokens=30, temperature=0.0), emitter("good")))
    time.sleep(0.2)
    eng.submit(Request([1, 999], Params(max_tokens=5, temperature=0.0), emitter("bad")))  # past the vocabulary
    assert ended.wait(60)
    eng.close()
    assert got["bad"][0] == "error" and "prefill failed: IndexError" in got["bad"][1]
    assert got["good"][0] == "done" and got["good"][1]["completion_tokens"] == 30


def test_a_request_whose_client_left_frees_its_row():
    """The HTTP side marks a request cancelled when its client disconnects: it leaves the batch at its next token,
    and the others go on."""
    torch.manual_seed(0)
    model = build_model(make_config({**TINY, "vocab_size": 64}), device="cpu").eval()
    eng = Engine(model, _Ids(), set(), max_batch=2).start()
    out, ended = {}, threading.Event()

    def emitter(name, req_box):
        def emit(kind, payload):
            if kind == "delta" and name == "left":
                req_box[0].cancelled = True  # the client went away after its first text
            if kind == "done":
                out[name] = payload
                if len(out) == 2:
                    ended.set()
        return emit

    boxes = {n: [None] for n in ("left", "stayed")}
    for name in boxes:
        boxes[name][0] = Request([1, 2, 3], Params(max_tokens=40, temperature=0.0), emitter(name, boxes[name]))
        eng.submit(boxes[name][0])
    assert ended.wait(60)
    eng.close()
    assert out["left"]["finish_reason"] == "cancelled" and out["left"]["completion_tokens"] < 5
    assert out["stayed"]["finish_reason"] == "length" and out["stayed"]["completion_tokens"] == 40
    assert eng.cache.n == 0


@pytest.fixture(scope="module")
def server(tmp_path_factory, chat_tokenizer):
    """`minigpt serve` on a tiny random model with the chat tokenizer, on a loopback port."""
    import shutil

    torch.manual_seed(0)
    folder = save_model(build_model(make_config(TINY), device="cpu"), tmp_path_factory.mktemp("m") / "model")
    for f in chat_tokenizer.iterdir():
        shutil.copy2(f, folder / f.name)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "minigpt_assets.cli", "serve", str(folder), "--port", str(port),
                             "--name", "tiny", "--max-tokens-limit", "64", "--max-batch", "8"], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
        assert proc.poll() is None, proc.stdout.read()
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def test_the_openai_client_plain_and_streamed(server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["tiny"]
    msgs = [{"role": "user", "content": "What is 2 + 3?"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0.8, seed=7)
    text = r.choices[0].message.content
    assert r.object == "chat.completion" and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # the same seed streams the same answer, delta by delta, with the usage in the last chunk
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0.8,
                                                  seed=7, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant" and all(c.choices for c in chunks)  # OpenAI's shape
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens  # the usage rides on the last chunk
    asked = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0.8,
                                                seed=7, stream=True, stream_options={"include_usage": True}))
    assert asked[-1].choices == [] and asked[-1].usage.total_tokens == r.usage.total_tokens  # as OpenAI sends it
    greedy = client.completions.create(model="tiny", prompt="The year", max_tokens=8, temperature=0)
    streamed = client.completions.create(model="tiny", prompt="The year", max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == greedy.choices[0].text
    assert greedy.object == "text_completion" and greedy.usage.completion_tokens >= 1


def test_stop_sequences_end_the_answer_before_them(server):
    free = httpx.post(f"{server}/v1/completions", json={"model": "tiny", "prompt": "a b c", "max_tokens": 20,
                                                        "temperature": 0}).json()["choices"][0]["text"]
    assert len(free) > 4
    stop = free[2:4]
    cut = httpx.post(f"{server}/v1/completions", json={"model": "tiny", "prompt": "a b c", "max_tokens": 20,
                                                       "temperature": 0, "stop": [stop]}).json()["choices"][0]
    assert cut["text"] == free[:free.index(stop)] and cut["finish_reason"] == "stop"


@pytest.mark.parametrize("body, param, code", [
    (b"{not json", None, "invalid_json"),
    (json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}), "model", "model_not_found"),
    (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}), "max_tokens",
     "invalid_value"),
    (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 65}), "max_tokens",
     "invalid_value"),
    (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "word " * 400}]}), "messages",
     "context_length_exceeded"),
    (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": 3}]}), "messages.0.content",
     "invalid_value"),
    (json.dumps({"model": "tiny", "messages": []}), "messages", "invalid_value"),
])
def test_bad_requests_are_400_with_an_openai_error_and_the_server_keeps_serving(server, body, param, code):
    r = httpx.post(f"{server}/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["code"] == code and err["message"]
    ok = httpx.post(f"{server}/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
    assert ok.status_code == 200


def test_concurrent_streams_all_complete_and_share_the_batches(server):
    """16 streams at once (8 decoded together): all end with [DONE], and together they take far less than 16 times
    one stream's time."""
    import asyncio

    async def one(client, i):
        body = {"model": "tiny", "prompt": f"number {i}", "max_tokens": 24, "temperature": 1.0, "seed": i,
                "stream": True}
        t0, tokens, last = time.perf_counter(), 0, None
        async with client.stream("POST", f"{server}/v1/completions", json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    last = line[6:]
                    if last != "[DONE]" and json.loads(last).get("usage"):
                        tokens = json.loads(last)["usage"]["completion_tokens"]
        return time.perf_counter() - t0, tokens, last

    async def run(n):
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(one(client, i) for i in range(n)))

    t0 = time.perf_counter()
    single = asyncio.run(run(1))[0][0]
    t1 = time.perf_counter()
    out = asyncio.run(run(16))
    many = time.perf_counter() - t1
    assert all(last == "[DONE]" and tokens >= 1 for _, tokens, last in out)
    assert many < 16 * (t1 - t0) * 0.5, (single, many)


def test_the_chat_page_streams_answers_and_keeps_the_conversation(server, browser):  # noqa: F811
    page = browser
    sent = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/chat/completions") else None)
    page.goto(server + "/", wait_until="networkidle")
    page.wait_for_function("document.getElementById('model').textContent.startsWith('tiny')")
    page.fill("#max_tokens", "10")
    page.fill("#input", "Hello there")
    page.press("#input", "Enter")
    page.wait_for_selector(".assistant[data-done='1']", timeout=30_000)
    first = page.locator(".assistant").first
    assert first.locator(".meta").inner_text().split(" tokens")[0].isdigit()
    page.fill("#input", "And again?")
    page.click("#send")
    page.wait_for_selector(".assistant[data-done='1'] >> nth=1", timeout=30_000)
    assert [m["role"] for m in sent[1]["messages"]] == ["user", "assistant", "user"]
    assert sent[1]["messages"][0]["content"] == "Hello there" and sent[1]["stream"] is True
    answer = page.evaluate("document.querySelectorAll('.assistant')[0].firstChild.textContent")
    assert sent[1]["messages"][1]["content"] == answer and len(answer) > 0
    assert page.locator(".user").all_inner_texts() == ["Hello there", "And again?"]
