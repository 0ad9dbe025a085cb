"""The sample request, the answer parsing and the printed curl commands; post_json against a real local HTTP server."""

from __future__ import annotations

import json
import shlex
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from kubeforge.local.serving import answer_text, curl_commands, post_json, sample_request, served_model


def test_sample_request_per_task():
    lm = sample_request("languageModeling", "The Python", 48)
    assert (lm.path, lm.body) == ("/v1/completions", {"prompt": "The Python", "max_tokens": 48})
    cls = sample_request("classification", "some text")
    assert (cls.path, cls.body) == ("/v1/classify", {"input": "some text"})


def test_a_model_with_a_chat_template_is_shown_off_with_a_chat_turn():
    models = {
        "data": [
            {"id": "m", "task": "languageModeling", "chatTemplate": True},
            {"id": "terse", "parent": "m", "version": "v1"},
        ]
    }
    task, chat = served_model(models)
    assert (task, chat) == ("languageModeling", True)
    request = sample_request(task, "What does json.dumps do?", 16, chat=chat)
    assert request.path == "/v1/chat/completions"
    assert request.body == {"messages": [{"role": "user", "content": "What does json.dumps do?"}], "max_tokens": 16}
    answer = {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "It"}}]}
    assert answer_text(task, answer) == "It"
    assert served_model({"data": [{"id": "m", "task": "classification", "chatTemplate": False}]}) == (
        "classification",
        False,
    )
    commands = curl_commands("http://h:1", task, "hi", None, chat=True)
    assert all("/v1/chat/completions" in c for c in commands[:2])
    assert json.loads(shlex.split(commands[1])[-1])["stream"] is True


def test_answer_text():
    completion = {
        "object": "text_completion",
        "choices": [{"index": 0, "text": " is a language", "finish_reason": "length"}],
    }
    assert answer_text("languageModeling", completion) == " is a language"
    classified = {"object": "list", "data": [{"index": 0, "label": "spam", "score": 0.875, "scores": {}}]}
    assert answer_text("classification", classified) == "spam (score 0.88)"


def test_curl_commands_are_valid_shell_with_json_bodies():
    commands = curl_commands("http://127.0.0.1:8000", "languageModeling", "it's", "http://127.0.0.1:8080/metrics")
    assert len(commands) == 4
    first = shlex.split(commands[0])
    assert first[:3] == ["curl", "-s", "http://127.0.0.1:8000/v1/completions"]
    assert json.loads(first[-1]) == {"prompt": "it's", "max_tokens": 32}
    assert json.loads(shlex.split(commands[1])[-1])["stream"] is True
    assert commands[2] == "curl -s http://127.0.0.1:8000/v1/models"
    assert commands[3].startswith("curl -s http://127.0.0.1:8080/metrics | grep kubeforge_inference_")
    classify = curl_commands("http://h:1", "classification", "x", None)
    assert [shlex.split(c)[2] for c in classify] == ["http://h:1/v1/classify", "http://h:1/v1/models"]


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body.get("prompt") == "bad":
            payload, code = {"error": {"message": "prompt is bad", "type": "invalid_request_error"}}, 400
        else:
            payload, code = {"choices": [{"text": body["prompt"].upper()}]}, 200
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server():
    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_post_json_returns_the_answer_and_turns_errors_into_one_line(server):
    assert post_json(server + "/v1/completions", {"prompt": "hi"}) == {"choices": [{"text": "HI"}]}
    with pytest.raises(RuntimeError, match=r"answered 400: prompt is bad$"):
        post_json(server + "/v1/completions", {"prompt": "bad"})


def test_post_json_to_nothing_fails_cleanly():
    with pytest.raises(RuntimeError, match="failed"):
        post_json("http://127.0.0.1:9/v1/completions", {"prompt": "x"}, timeout=5)
