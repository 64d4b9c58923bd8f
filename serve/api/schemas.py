"""Request bodies of the HTTP contract (../shared/DESIGN.md), validated strictly."""
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

CHANNEL_ID = r"^[\w.:-]{1,100}$"
IDEMPOTENCY_KEY = r"^[\x21-\x7e]{1,200}$"  # printable ASCII, e.g. a Discord message id
MAX_SEED = 2**63 - 1


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class ChatUser(Strict):
    id: str = Field(min_length=1, max_length=100)
    name: str = Field(max_length=200)


class ChatRequest(Strict):
    channel_id: str = Field(pattern=CHANNEL_ID)
    user: ChatUser
    message: str | None = None  # required unless `regenerate`
    stream: bool = False  # server-sent events instead of JSON
    regenerate: bool = False  # a new reply to the channel's last message, replacing the last reply


class FeedbackUser(Strict):
    id: str = Field(min_length=1, max_length=100)


class FeedbackRequest(Strict):
    channel_id: str = Field(pattern=CHANNEL_ID)
    reply: str = Field(min_length=1, max_length=4000)
    rating: Literal[1, -1]
    user: FeedbackUser


class TextPart(Strict):
    type: Literal["text"]
    text: str


class OpenAIMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(default=None, max_length=200)

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class OpenAIRequest(Strict):
    model: str | None = None
    messages: list[OpenAIMessage] = Field(min_length=1, max_length=200)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
