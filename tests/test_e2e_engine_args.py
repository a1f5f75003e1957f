"""A model folder on disk, served under a name of the operator's choosing, with an extra vLLM
engine flag: a copy of the packaged model served with ``LLM_MODEL_ID=<folder>``,
``LLM_SERVED_MODEL_NAME=my-model`` and ``LLM_ENGINE_ARGS="--max-num-seqs 3"`` (one more engine,
hence ``slow``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.metrics import scrape
from tests.served import Served, serving
from vllm_bento.packaged_model import ensure_packaged_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
NAME = "my-model"
MAX_NUM_SEQS = 3


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the packaged model, outside the BentoML store."""
    folder = tmp_path_factory.mktemp("model") / "smollm2-copy"
    shutil.copytree(ensure_packaged_model().path, folder)
    return folder


@pytest.fixture(scope="module")
def folder_server(model_folder: Path) -> Iterator[Served]:
    env = {"LLM_MODEL_ID": str(model_folder), "LLM_SERVED_MODEL_NAME": NAME,
           "LLM_ENGINE_ARGS": f"--max-num-seqs {MAX_NUM_SEQS}",
           # A fixed cap, well above what is sent here, so admission does not depend on the
           # engine's max_num_seqs.
           "LLM_MAX_IN_FLIGHT": "32"}
    with serving("engine-args", env=env) as served:
        yield served


def test_models_lists_the_served_name_from_the_folder(folder_server: Served,
                                                     model_folder: Path) -> None:
    client = openai.OpenAI(base_url=f"{folder_server.url}/v1", api_key="unused", timeout=300)
    (model,) = client.models.list().data
    assert model.id == NAME
    # No file system path: vLLM's own root would be the model folder.
    assert (model.model_extra or {})["root"] == NAME
    assert str(model_folder) not in httpx.get(f"{folder_server.url}/v1/models", timeout=30).text


def test_chat_answers_under_the_served_name(folder_server: Served) -> None:
    client = openai.OpenAI(base_url=f"{folder_server.url}/v1", api_key="unused", timeout=300)
    reply = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Who are you?"}], max_tokens=16,
        temperature=0)
    assert reply.model == NAME
    assert reply.choices[0].message.content


def test_engine_runs_at_most_max_num_seqs_requests(folder_server: Served) -> None:
    """Six equal requests at once: the engine runs three and queues the rest. With the flag
    dropped, vLLM's default (hundreds) would run all six.

    Read from vLLM's cumulative histograms, whatever the machine's speed: each of the three
    queued requests waits for a whole answer of the first three, so the six requests' queue
    time adds up to about half their inference time (three waits of one answer each, over six
    answers); run all at once, they wait milliseconds. (A poll of the running gauge can miss
    the moment on a loaded machine, and on a GPU it lasts a fraction of a second.)"""
    body = {"model": NAME, "max_tokens": 96, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Tell a long story."}]}

    def histogram(name: str) -> tuple[float, float]:
        return (scrape(folder_server.url, f"vllm:{name}_seconds_sum") or 0.0,
                scrape(folder_server.url, f"vllm:{name}_seconds_count") or 0.0)

    (queued_s, queued), (inference_s, _) = histogram("request_queue_time"), histogram(
        "request_inference_time")
    with ThreadPoolExecutor(2 * MAX_NUM_SEQS) as pool:
        statuses = list(pool.map(
            lambda _: httpx.post(f"{folder_server.url}/v1/chat/completions", json=body,
                                 timeout=300).status_code, range(2 * MAX_NUM_SEQS)))
    assert statuses == [200] * 2 * MAX_NUM_SEQS
    (queued_s_after, queued_after), (inference_s_after, _) = histogram(
        "request_queue_time"), histogram("request_inference_time")
    assert queued_after - queued == 2 * MAX_NUM_SEQS
    waited_s, ran_s = queued_s_after - queued_s, inference_s_after - inference_s
    print(f"\nqueue time {waited_s:.2f} s over inference time {ran_s:.2f} s")
    assert waited_s >= 0.25 * ran_s, (waited_s, ran_s)  # about 0.5; all at once: about 0


def test_generate_loops_back_under_the_served_name(folder_server: Served) -> None:
    r = httpx.post(f"{folder_server.url}/generate",
                   json={"prompt": "Who are you?", "max_tokens": 128}, timeout=300)
    assert r.status_code == 200, r.text
    assert r.text.strip()
