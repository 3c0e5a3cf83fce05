"""``ChatPackLLM.with_structured_output``: the model bound to a schema's grammar, and a parser after it."""

from __future__ import annotations

import json
from operator import itemgetter
from typing import Any

from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import BaseOutputParser, JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.outputs import Generation
from langchain_core.runnables import Runnable, RunnableLambda, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from pydantic import BaseModel

from .. import Constraint
from ..errors import ConfigError

__all__ = ["structured_output"]

METHODS = ("json_schema", "function_calling", "json_mode")


def structured_output(
    model: Any, schema: dict[str, Any] | type | None, method: str, include_raw: bool, extra: dict[str, Any]
) -> Runnable[Any, Any]:
    """``model`` bound so that its reply is ``schema``'s JSON, then parsed (``ChatPackLLM.with_structured_output``)."""
    if extra:
        name = next(iter(extra))
        raise ConfigError(
            name, extra[name], "no such with_structured_output argument (schema, method, include_raw, strict)"
        )
    if method not in METHODS:
        raise ConfigError("method", method, f"one of {list(METHODS)}")
    if schema is None and method != "json_mode":
        raise ConfigError("schema", None, f"a pydantic model, TypedDict or JSON Schema (method={method!r} needs one)")
    pydantic = _is_pydantic(schema)
    trace = {"ls_structured_output_format": {"kwargs": {"method": method}, "schema": schema}}
    parser: BaseOutputParser[Any] | Runnable[Any, Any]
    if method == "function_calling":
        tool = _forced_tool(schema)  # type: ignore[arg-type]
        name = tool["function"]["name"]
        try:
            bound = model.bind_tools([tool], tool_choice=name, parallel_tool_calls=False, **trace)
        except ConfigError as exc:  # the schema, as the tool it becomes, is what is wrong
            raise ConfigError("schema", schema, f"a schema for a forced call: {exc.expected}") from None
        if pydantic:
            tools_parser: Any = PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
        else:
            tools_parser = JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        parser = RunnableLambda(_called) | tools_parser
    else:
        try:
            constraint = Constraint.json() if schema is None else Constraint.json_schema(_json_schema(schema))
        except ConfigError as exc:
            raise ConfigError("schema", schema, exc.expected) from None
        if problem := constraint.problem():
            raise ConfigError("schema", schema, f"a JSON Schema the grammar library takes ({problem})")
        bound = model.bind(constraint=constraint, **trace)
        parser = _WholePydantic(pydantic_object=schema) if pydantic else _WholeJson()  # type: ignore[arg-type]
    if not include_raw:
        return bound | parser
    parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    failed = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=bound) | parsed.with_fallbacks([failed], exception_key="parsing_error")


class _Whole:
    """A JSON parser that takes only a whole reply: LangChain's would read a cut one (``{"set``) as a partial
    object. Streamed chunks still parse as partial objects, as LangChain's do."""

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
        if not partial:
            text = result[0].text
            message = getattr(result[0], "message", None)
            metadata = message.response_metadata if message is not None else {}
            finish = metadata.get("finish_reason")
            if finish == "length":
                why = metadata.get("finish_detail") or "max_tokens ended the structured output before it was whole"
                raise OutputParserException(f"the structured output was cut: {why}", llm_output=text)
            try:
                json.loads(text)
            except json.JSONDecodeError as exc:
                why = f"the structured output did not parse: {exc} (finish_reason={finish!r})"
                raise OutputParserException(why, llm_output=text) from None
        return super().parse_result(result, partial=partial)  # type: ignore[misc]


class _WholeJson(_Whole, JsonOutputParser):
    """:class:`_Whole` for dicts (TypedDicts, JSON Schemas, JSON mode)."""


class _WholePydantic(_Whole, PydanticOutputParser):  # type: ignore[type-arg]
    """:class:`_Whole` for pydantic models."""


def _called(message: AIMessage) -> AIMessage:
    """``message``, unless its forced call is missing (cut by ``max_tokens``): then an ``OutputParserException``.

    Streamed, the cut call is in ``response_metadata["invalid_tool_calls"]`` (see ``ChatPackLLM._chunk``).
    """
    if not message.tool_calls:
        invalid = message.invalid_tool_calls or message.response_metadata.get("invalid_tool_calls") or []
        why = invalid[0].get("error") if invalid else "the reply holds no call"
        finish = message.response_metadata.get("finish_reason")
        raise OutputParserException(f"the structured output did not parse: {why} (finish_reason={finish!r})")
    return message


def _forced_tool(schema: dict[str, Any] | type) -> dict[str, Any]:
    """The tool a forced call of ``schema`` is (``method="function_calling"``).

    A JSON Schema is taken whole, its ``title`` the tool's name: LangChain's conversion keeps
    one only when it has top-level ``properties``, so that a ``oneOf`` or ``anyOf`` of objects
    would become a tool without arguments.
    """
    if isinstance(schema, dict) and "function" not in schema and "name" not in schema:
        title = schema.get("title")
        if not isinstance(title, str):
            raise ConfigError("schema", schema, "a JSON Schema with a 'title' (the tool's name) for function_calling")
        parameters = {k: v for k, v in schema.items() if k not in ("title", "description")}
        description = schema.get("description") or ""
        return {"type": "function", "function": {"name": title, "description": description, "parameters": parameters}}
    try:
        return convert_to_openai_tool(schema)
    except (ValueError, TypeError) as exc:
        raise ConfigError("schema", schema, f"a pydantic model, TypedDict or JSON Schema ({exc})") from None


def _is_pydantic(schema: Any) -> bool:
    if not isinstance(schema, type):
        return False
    if issubclass(schema, BaseModel):
        return True
    try:
        from pydantic.v1 import BaseModel as BaseModelV1
    except ImportError:  # pragma: no cover - pydantic 2 always ships v1
        return False
    return issubclass(schema, BaseModelV1)


def _json_schema(schema: dict[str, Any] | type) -> dict[str, Any]:
    """The JSON Schema of a pydantic model (v2: as it validates, ``$defs`` kept), TypedDict or dict."""
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema.model_json_schema()
    if isinstance(schema, dict) and "function" not in schema and "name" not in schema:
        return schema
    try:
        return convert_to_json_schema(schema)
    except (ValueError, TypeError) as exc:
        raise ConfigError("schema", schema, f"a pydantic model, TypedDict or JSON Schema ({exc})") from None
