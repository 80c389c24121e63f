"""OpenAI's Responses API to and from the pivot, the chat-completions shape (pure): the public face.

A Responses request becomes one chat request (`to_pivot`); the chat answer becomes one Response object
(`from_pivot`); `conversation` keeps what a later request naming this one as `previous_response_id`
continues from. The streamed answer is `streams.pivot_to_responses`, built on the helpers here
(`request_echo`, `response_object`, `item_id`, `usage_object`, `client_names`), so both give the same
object. The work is done in four modules, re-exported here:

- `responses_checks`: the field checks of a request, in OpenAI's wording;
- `responses_tools`: `tools` and `tool_choice` as the pivot's, and the tool names to map calls back;
- `responses_request`: the request as the pivot (`to_pivot`): input items, text.format, reasoning;
- `responses_answer`: the pivot's answer as a Response (`from_pivot`, its output items, usage, the echo of
  the request) and `conversation`.

The oracle of every shape is the official `openai` Python SDK: `types/responses/response_create_params.py`
and `response_input_item_param.py` for what a client sends, `types/responses/response.py` and the item
types it names for what it validates back. Error wording is OpenAI's own ("Missing required parameter:
'input'.", "Invalid type for ...") because clients and people search for it.

What the pivot cannot carry is dropped, never refused: Codex and new SDKs send item and tool types this
module does not know (web_search, local_shell, mcp, custom tools; reasoning and item_reference items),
and a 400 for them would make the client unusable. What would silently change the meaning of a request
(a file) is a 400 that says so.
"""

from __future__ import annotations

from .responses_answer import (
    ResponseMeta,
    conversation,
    from_pivot,
    function_call_item,
    incomplete_reason,
    item_id,
    request_echo,
    response_object,
    usage_object,
)
from .responses_request import to_pivot
from .responses_tools import client_names

__all__ = [
    "ResponseMeta",
    "client_names",
    "conversation",
    "from_pivot",
    "function_call_item",
    "incomplete_reason",
    "item_id",
    "request_echo",
    "response_object",
    "to_pivot",
    "usage_object",
]
