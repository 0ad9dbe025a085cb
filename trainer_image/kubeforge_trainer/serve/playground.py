"""The chat playground of a ModelDeployment (spec.playground): a Gradio page at /playground of the same application.

The page answers through the app's own /v1/chat/completions path in-process: the same engine, admission, adapters,
limits and metrics as any API client, with no second model copy and no HTTP hop. Gradio is imported only when the
playground is enabled (its import takes seconds), and the page is built on its first request, inside the replica's
event loop, where Gradio's queue must run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from kubeforge.api.modeldeployment import GenerationDefaults, RequestLimits
from kubeforge.constants import SERVE_PLAYGROUND_PATH as PATH
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

MAX_TOKENS_SLIDER = 1024  # the slider's top when spec.limits.maxTokens does not set one
TEMPERATURE_SLIDER = 2.0
# System fonts: the page must not fetch Google's fonts (clusters and CI often have no internet).
FONTS = ("ui-sans-serif", "system-ui", "sans-serif")
MONO_FONTS = ("ui-monospace", "monospace")
# HTML ids of the conversation, the message box and the model picker
CHAT_ID, MESSAGE_ID, MODEL_ID = "kubeforge-chat", "kubeforge-message", "kubeforge-model"

Answer = Callable[[dict[str, Any]], Awaitable[Response]]  # a chat request body -> the app's own response to it


class PlaygroundError(Exception):
    """The app refused or failed a playground chat; the message is the API's error message."""


def is_playground_path(path: str) -> bool:
    """Whether a path (below the route prefix) belongs to the playground."""
    return path == PATH or path.startswith(PATH + "/")


def chat_messages(message: str, history: Sequence[dict[str, Any]], system: str = "") -> list[dict[str, str]]:
    """OpenAI chat messages from the page's system prompt, Gradio's history and the new message."""
    messages = [{"role": "system", "content": system}] if system.strip() else []
    for turn in history:
        text = _text(turn.get("content"))
        if turn.get("role") in ("user", "assistant") and text:
            messages.append({"role": turn["role"], "content": text})
    messages.append({"role": "user", "content": message})
    return messages


def _text(content: Any) -> str:
    """The text of a Gradio message content: a string, or a list of parts ({"type": "text", "text": ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, list | tuple):
        return "".join(_text(part) for part in content)
    if isinstance(content, dict) and isinstance(content.get("text"), str):
        return content["text"]
    return ""  # files and components: the chat API takes text only


def chat_body(
    model: str, messages: list[dict[str, str]], temperature: float, top_p: float, max_tokens: float
) -> dict[str, Any]:
    """The streamed /v1/chat/completions body the page sends."""
    return {
        "model": model,
        "messages": messages,
        "stream": True,
        "temperature": float(temperature),
        "top_p": float(top_p),
        "max_tokens": int(max_tokens),
    }


async def stream_text(response: Response) -> AsyncIterator[str]:
    """The growing answer text of the app's streamed chat response; an error answer raises PlaygroundError."""
    if not isinstance(response, StreamingResponse):
        raise PlaygroundError(_error_message(response.body))
    iterator = response.body_iterator
    text = ""
    try:
        async for chunk in iterator:
            raw = chunk.decode() if isinstance(chunk, bytes | bytearray | memoryview) else str(chunk)
            grown = False
            for line in raw.splitlines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[len("data: ") :])
                if "error" in event:
                    raise PlaygroundError(event["error"].get("message", "the server failed on this request"))
                for choice in event.get("choices", []):
                    delta = (choice.get("delta") or {}).get("content") or ""
                    text += delta
                    grown = grown or bool(delta)
            if grown:
                yield text
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:  # the page stopped or left: the stream's own cleanup cancels the generation
            await close()


def _error_message(body: bytes | memoryview) -> str:
    try:
        return str(json.loads(bytes(body))["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return "the server failed on this request"


def key_matches(given: str, keys: Sequence[bytes]) -> bool:
    """Whether the page's password is one of the API keys (constant time, like the API's Bearer check)."""
    matches = [hmac.compare_digest(given.encode(), key) for key in keys]
    return any(matches)


def build_blocks(
    name: str, models: Callable[[], list[str]], answer: Answer, defaults: GenerationDefaults, limits: RequestLimits
) -> Any:
    """The page: a model picker (base and adapters, as /v1/models lists them), sampling sliders, a streaming chat."""
    import gradio as gr

    max_tokens_top = limits.max_tokens or MAX_TOKENS_SLIDER

    async def respond(
        message: str,
        history: list[dict[str, Any]],
        model: str,
        system: str,
        temperature: float,
        top_p: float,
        max_tokens: float,
    ) -> AsyncIterator[str]:
        body = chat_body(model, chat_messages(message, history, system), temperature, top_p, max_tokens)
        try:
            async for text in stream_text(await answer(body)):
                yield text
        except PlaygroundError as exc:
            raise gr.Error(str(exc)) from None

    def refresh_models() -> Any:
        # Adapters come and go with the spec (loaded without a restart): each page load asks again.
        choices = models()
        return gr.Dropdown(choices=choices, value=choices[0])

    with gr.Blocks(title=f"{name} playground") as blocks:
        gr.Markdown(f"## {name}\nChat with ModelDeployment `{name}`; answers stream from its engine.")
        with gr.Row():
            initial = models()
            model = gr.Dropdown(
                choices=initial, value=initial[0], label="Model (base or LoRA adapter)", elem_id=MODEL_ID
            )
            temperature = gr.Slider(
                0,
                max(TEMPERATURE_SLIDER, defaults.temperature),
                value=defaults.temperature,
                step=0.05,
                label="Temperature",
            )
            top_p = gr.Slider(0.05, 1, value=defaults.top_p, step=0.05, label="Top p")
            max_tokens = gr.Slider(
                1, max_tokens_top, value=min(defaults.max_tokens, max_tokens_top), step=1, label="Max tokens"
            )
        system = gr.Textbox(label="System prompt", placeholder="optional", lines=1)
        gr.ChatInterface(
            respond,
            additional_inputs=[model, system, temperature, top_p, max_tokens],
            chatbot=gr.Chatbot(elem_id=CHAT_ID, label=name, height=400),
            textbox=gr.Textbox(elem_id=MESSAGE_ID, placeholder="Message", submit_btn=True, stop_btn=True),
        )
        blocks.load(refresh_models, outputs=model)
    # The app's admission gate bounds concurrent chats; Gradio's default (one at a time) would serialise users.
    blocks.queue(default_concurrency_limit=None)
    return blocks


def mount(blocks: Any, api_keys: Sequence[bytes]) -> Any:
    """A FastAPI app with the page at PATH; with API keys the page has a login whose password is a key."""
    import gradio as gr
    from fastapi import FastAPI

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    auth = (lambda _user, password: key_matches(password, api_keys)) if api_keys else None
    message = "Log in with any user name and one of the deployment's API keys as the password." if api_keys else None
    theme = gr.themes.Default(font=list(FONTS), font_mono=list(MONO_FONTS))
    return gr.mount_gradio_app(app, blocks, path=PATH, auth=auth, auth_message=message, ssr_mode=False, theme=theme)


class Playground:
    """The page's ASGI app, built and started (Gradio's queue) on its first request."""

    def __init__(self, build: Callable[[], Any]) -> None:
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a serving pod
        import gradio  # noqa: F401  (with the replica, not on the first page load)

        self._build = build
        self._app: Any = None
        self._lock = asyncio.Lock()
        self._lifespan = contextlib.AsyncExitStack()

    async def response(self) -> Response:
        """A response that hands the request to the page (Serve sends a returned Response by calling it)."""
        async with self._lock:
            if self._app is None:
                app = self._build()
                await self._lifespan.enter_async_context(app.router.lifespan_context(app))
                self._app = app
        return _Delegate(self._app)


class _Delegate(Response):
    def __init__(self, app: ASGIApp) -> None:
        super().__init__()
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
