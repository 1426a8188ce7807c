"""Turn the agent's messages (images as arrays) into what a chat backend takes."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from .base import Message

__all__ = ["split_images", "with_data_urls"]


def split_images(messages: list[Message]) -> tuple[list[Message], list[Image.Image]]:
    """Image parts become `{"type": "image"}` placeholders; the images are returned in order."""
    images: list[Image.Image] = []
    chat: list[Message] = []
    for message in messages:
        content = []
        for part in message["content"]:
            if part["type"] == "image":
                images.append(Image.fromarray(np.asarray(part["image"], np.uint8)))
                content.append({"type": "image"})
            else:
                content.append(part)
        chat.append({"role": message["role"], "content": content})
    return chat, images


def _data_url(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def with_data_urls(messages: list[Message]) -> list[Message]:
    """OpenAI chat-completions layout: images as base64 PNG data URLs."""
    converted = []
    for message in messages:
        content = [
            {"type": "image_url", "image_url": {"url": _data_url(part["image"])}} if part["type"] == "image" else part
            for part in message["content"]
        ]
        converted.append({"role": message["role"], "content": content})
    return converted
