"""examples/finetune end to end at reduced sizes, through the real `kubeforge run` command: instruction and preference
data from the standard library's docstrings, SFT, DPO with LoRA from the SFT export, and the chat API answering the
official `openai` client for the SFT base and for the DPO adapter by name, with the playground page."""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path

import openai
import pytest
from support import cli_process
from test_quickstart_e2e import READY_LINE, condition, read_until, status_of

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]

SFT_METRICS = {"loss", "perplexity"}
DPO_METRICS = {"loss", "rewardAccuracy", "rewardMargin", "chosenLogps", "rejectedLogps"}


def test_reduced_finetune_chain_end_to_end(reduced_finetune: Path, free_port):
    workdir = reduced_finetune.parent
    port = free_port()
    run = cli_process(
        ["run", str(reduced_finetune), "--serve", "--plain", "--port", str(port), "--metrics-port", str(free_port())],
        workdir,
    )
    try:
        output = read_until(run, READY_LINE, timeout=900)
        text = "\n".join(output)
        assert "Traceback" not in text
        assert text.count("✓ Succeeded") == 4 and "✓ Ready" in text

        for name in ("finetune-instructions", "finetune-preferences"):
            data = status_of(workdir, "DataPipeline", name)
            assert data["phase"] == "Succeeded" and data["rowsOut"] > 0, data
        sft = status_of(workdir, "TrainingJob", "finetune-sft")
        assert sft["phase"] == "Succeeded" and sft["step"] == sft["totalSteps"] == 12
        assert set(sft["testMetrics"]) >= SFT_METRICS
        dpo = status_of(workdir, "TrainingJob", "finetune-dpo")
        assert dpo["phase"] == "Succeeded" and dpo["step"] == dpo["totalSteps"] == 6
        assert condition(dpo, "Ready")["status"] == "True"
        assert set(dpo["testMetrics"]) >= DPO_METRICS
        assert 0.0 <= dpo["testMetrics"]["rewardAccuracy"] <= 1.0

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        chat = client.chat.completions.create(
            model="finetune-chat",
            messages=[{"role": "user", "content": "What does `json.dumps` do?"}],
            max_tokens=8,
            temperature=0,
        )
        assert chat.choices[0].message.role == "assistant"
        assert isinstance(chat.choices[0].message.content, str)
        assert chat.usage.completion_tokens > 0
        # The DPO run's LoRA adapter over the SFT base, picked by name, and listed beside the base.
        assert {m.id for m in client.models.list().data} == {"finetune-chat", "finetune-dpo"}
        tuned = client.chat.completions.create(
            model="finetune-dpo",
            messages=[{"role": "user", "content": "What does `json.dumps` do?"}],
            max_tokens=8,
            temperature=0,
        )
        assert tuned.model == "finetune-dpo" and tuned.usage.completion_tokens > 0
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-adapter", messages=[{"role": "user", "content": "hi"}])
        # spec.playground: the chat page is printed and served by the same application.
        assert f"http://127.0.0.1:{port}/playground/" in text
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/playground/", timeout=120) as page:
            assert page.status == 200 and "gradio" in page.read().decode(errors="replace").lower()
    finally:
        run.send_signal(signal.SIGINT)
        rest, _ = run.communicate(timeout=120)
    assert run.returncode == 0, rest
