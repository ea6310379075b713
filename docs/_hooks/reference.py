"""MkDocs hook: the reference pages, generated at build time so they cannot drift.

- `reference/cli.md` walks the typer app (`typer.main.get_command(slidemill.cli.app)`): every
  command and subcommand, its arguments and options with their types, defaults, limits and help.
- `reference/config/*.md` renders the JSON Schemas that `slidemill schemas` writes
  (`write_json_schemas`) and those of the service's settings and requests
  (`model_json_schema()`), as tables of field, type, default, limits and description.

The pages are added to the build's files in memory (`File.generated`): nothing is written into
docs/, so there is nothing to keep in step by hand.
"""

from __future__ import annotations

import enum
import inspect
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

# the configuration pages: (file stem, title, what it configures, where it comes from)
_SCHEMA_PAGES = [
    ("run-spec", "Run spec", "run_spec", "What `slidemill run` and a service batch run with."),
    (
        "cluster-config",
        "Cluster config",
        "cluster_config",
        "The `--cluster FILE` of `run`, `features` and `serve` (YAML or TOML); "
        "`slidemill cluster example NAME` prints a commented one.",
    ),
    ("tiling-spec", "Tiling spec", "tiling_spec", "How a slide is cut into tiles."),
    (
        "model-manifest",
        "Model manifest",
        "model_manifest",
        "`manifest.json` of a model bundle.",
    ),
    ("slide-result", "Slide result", "slide_result", "`result.json` of every slide of a run."),
    (
        "slide-store-attrs",
        "Slide store attributes",
        "slide_store_attrs",
        "`attributes['slidemill']` of each `slide.zarr`.",
    ),
    (
        "evaluation-report",
        "Evaluation report",
        "evaluation_report",
        "`evaluation.json` of `slidemill evaluate`.",
    ),
]


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated reference pages to the build."""
    pages = {"reference/cli.md": cli_reference()}
    pages.update(config_references())
    for src_uri, content in pages.items():
        files.append(File.generated(config, src_uri, content=content))
    return files


# ---------------------------------------------------------------------------------------------
# the command line


def cli_reference() -> str:
    """Markdown of every command of the `slidemill` app, read from typer's click command."""
    import typer

    from slidemill.cli import app

    root = typer.main.get_command(app)
    lines = [
        "# Command line",
        "",
        "Generated from the `slidemill` typer app when the docs are built; "
        "`slidemill COMMAND --help` prints the same.",
        "",
        _cell(_help(root)),
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    commands = list(_walk(root, "slidemill"))
    for path, command in commands:
        if not hasattr(command, "commands"):
            lines.append(f"| [`{path}`](#{_anchor(path)}) | {_cell(_first_line(command))} |")
    lines.append("")
    for path, command in commands:
        if hasattr(command, "commands"):
            lines += [f"## `{path}` {{ #{_anchor(path)} }}", "", _help(command), ""]
        else:
            lines += _command_section(path, command)
    return "\n".join(lines) + "\n"


def _walk(group: Any, path: str) -> Iterator[tuple[str, Any]]:
    for name, command in group.commands.items():
        if getattr(command, "hidden", False):
            continue
        sub = f"{path} {name}"
        yield sub, command
        if hasattr(command, "commands"):
            yield from _walk(command, sub)


def _command_section(path: str, command: Any) -> list[str]:
    ctx = command.context_class(command, info_name=path.split()[-1])
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    arguments = [p for p in params if p.param_type_name == "argument"]
    options = [p for p in params if p.param_type_name == "option"]
    usage = [path, "[OPTIONS]" if options else ""]
    for arg in arguments:
        name = arg.name.upper() + ("..." if arg.nargs == -1 else "")
        usage.append(name if arg.required else f"[{name}]")
    lines = [
        f"## `{path}` {{ #{_anchor(path)} }}",
        "",
        "```",
        " ".join(u for u in usage if u),
        "```",
        "",
        _help(command),
        "",
    ]
    if arguments:
        lines += ["| argument | type | required | help |", "|---|---|---|---|"]
        for arg in arguments:
            name = arg.name.upper() + ("..." if arg.nargs == -1 else "")
            lines.append(
                f"| `{name}` | {_type(arg, ctx)} | {'yes' if arg.required else 'no'} "
                f"| {_cell(arg.help or '')} |"
            )
        lines.append("")
    if options:
        lines += ["| option | type | default | help |", "|---|---|---|---|"]
        for opt in options:
            names = " / ".join(f"`{o}`" for o in [*opt.opts, *opt.secondary_opts])
            help_text = opt.help or ""
            if opt.envvar:
                envvars = [opt.envvar] if isinstance(opt.envvar, str) else list(opt.envvar)
                help_text += " (env: " + ", ".join(f"`{e}`" for e in envvars) + ")"
            lines.append(f"| {names} | {_type(opt, ctx)} | {_default(opt)} | {_cell(help_text)} |")
        lines.append("")
    return lines


def _help(command: Any) -> str:
    return inspect.cleandoc(command.help or "").replace("\b\n", "")


def _first_line(command: Any) -> str:
    return " ".join(_help(command).split("\n\n")[0].split())


def _type(param: Any, ctx: Any) -> str:
    # click ≥ 8.3 names it display_type; typer < 0.21 (which Flower pins) builds its parameters
    # on the older API, where the metavar says the same
    display = getattr(param, "display_type", None)
    text = (display(ctx) if callable(display) else param.make_metavar(ctx)).strip("<>")
    holder = param if hasattr(param, "min") else param.type  # click's range type, older typer
    low, high = getattr(holder, "min", None), getattr(holder, "max", None)
    if low is not None or high is not None:
        bounds = [f"≥ {low}"] if low is not None else []
        bounds += [f"≤ {high}"] if high is not None else []
        text += ", " + ", ".join(bounds)
    if getattr(param, "multiple", False):
        text += ", repeatable"
    return _cell(text)


def _default(param: Any) -> str:
    if param.required:
        return "required"
    default = param.default
    if getattr(param, "is_flag", False) and param.secondary_opts:
        if default is None:
            return "—"
        return f"`{param.opts[0] if default else param.secondary_opts[0]}`"
    if default is None or default == [] or default == ():
        return "—"
    if isinstance(default, enum.Enum):
        default = default.value
    return f"`{default}`"


# ---------------------------------------------------------------------------------------------
# configuration


def config_references() -> dict[str, str]:
    """Markdown of each contract's JSON Schema, keyed by the page's path in the site."""
    from slidemill.schemas import write_json_schemas
    from slidemill.service import BatchRequest, ScheduleRequest, ServiceSettings

    with tempfile.TemporaryDirectory() as folder:
        written = {p.name.removesuffix(".schema.json"): p for p in write_json_schemas(Path(folder))}
        schemas = {name: json.loads(path.read_text()) for name, path in written.items()}
    pages: dict[str, str] = {}
    listed = []
    for stem, title, name, about in _SCHEMA_PAGES:
        schema = schemas.pop(name)
        intro = f"{about} Its JSON Schema: `{name}.schema.json` from `slidemill schemas --out DIR`."
        pages[f"reference/config/{stem}.md"] = schema_page(title, intro, schema)
        listed.append((stem, title, about))
    # a contract added to the export later still gets its page
    for name, schema in sorted(schemas.items()):
        stem = name.replace("_", "-")
        title = schema.get("title", name)
        intro = f"`{name}.schema.json` from `slidemill schemas --out DIR`."
        pages[f"reference/config/{stem}.md"] = schema_page(title, intro, schema)
        listed.append((stem, title, intro))
    service = [
        (
            "service-settings",
            "Service settings",
            ServiceSettings,
            "How `slidemill serve` runs. Highest first: its flags, `SLIDEMILL_<FIELD>` "
            "variables (`SLIDEMILL_ALLOW_ROOTS` as a JSON list), the `--config` file "
            "(YAML or TOML, the same field names), the defaults.",
        ),
        (
            "batch-request",
            "Batch request",
            BatchRequest,
            "The body of `POST /api/batches` (what `slidemill submit` sends): the slides, the "
            "model, the output folder and `run`'s own options (`RunOptions`), checked with "
            "`run`'s bounds.",
        ),
        (
            "schedule-request",
            "Schedule request",
            ScheduleRequest,
            "The body of `POST /api/schedules` (what `slidemill schedule add` sends).",
        ),
    ]
    for stem, title, model, about in service:
        pages[f"reference/config/{stem}.md"] = schema_page(title, about, model.model_json_schema())
        listed.append((stem, title, about))
    index = [
        "# Configuration reference",
        "",
        "Generated from the contracts' JSON Schemas when the docs are built: each page is a "
        "table of the fields with their type, default, limits and description, and one "
        "table for each nested object.",
        "",
        "| page | what it describes |",
        "|---|---|",
    ]
    index += [f"| [{title}]({stem}.md) | {_cell(about)} |" for stem, title, about in listed]
    pages["reference/config/index.md"] = "\n".join(index) + "\n"
    return pages


def schema_page(title: str, intro: str, schema: dict[str, Any]) -> str:
    """One page: the schema's own object (or its variants), then each object it refers to."""
    defs: dict[str, Any] = schema.get("$defs", {})
    lines = [f"# {title}", "", intro, ""]
    description = _text(schema.get("description", ""))
    if description and description not in intro:
        lines += [description, ""]
    if "properties" in schema:
        lines += _fields_table(schema)
    elif "oneOf" in schema or "anyOf" in schema:
        variants = schema.get("oneOf") or schema.get("anyOf")
        discriminator = schema.get("discriminator", {}).get("propertyName")
        lines.append(
            "One of these, chosen by "
            + (f"`{discriminator}`" if discriminator else "its fields")
            + ":"
        )
        lines.append("")
        for variant in variants:
            lines.append(f"- {_schema_type(variant)}")
        lines.append("")
    for name in _reachable(schema, defs):
        definition = defs[name]
        lines += [f"## {name} {{ #{_anchor(name)} }}", ""]
        if definition.get("description"):
            lines += [_text(definition["description"]), ""]
        if "properties" in definition:
            lines += _fields_table(definition)
        elif "enum" in definition:
            values = ", ".join(f"`{json.dumps(v)}`" for v in definition["enum"])
            lines += [f"One of {values}.", ""]
        else:
            lines += [f"Type: {_schema_type(definition)}", ""]
    return "\n".join(lines) + "\n"


def _reachable(schema: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    """The names of `$defs` that `schema` refers to, directly or through others, in order."""
    seen: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                name = ref.removeprefix("#/$defs/")
                if name not in seen and name in defs:
                    seen.append(name)
                    visit(defs[name])
            for key, value in node.items():
                if key != "$defs":
                    visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return seen


def _fields_table(obj: dict[str, Any]) -> list[str]:
    required = set(obj.get("required", []))
    lines = ["| field | type | default | limits | description |", "|---|---|---|---|---|"]
    for name, prop in obj["properties"].items():
        if name in required:
            default = "required"
        elif "default" in prop:
            default = f"`{_json(prop['default'])}`"
        else:
            default = "computed"
        lines.append(
            f"| `{name}` | {_schema_type(prop)} | {_cell(default)} | {_cell(_limits(prop))} "
            f"| {_cell(_text(prop.get('description', '')))} |"
        )
    lines.append("")
    if obj.get("additionalProperties") is False:
        lines += ["Other fields are refused.", ""]
    return lines


def _schema_type(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{_anchor(name)})"
    if "const" in prop:
        return f"`{_json(prop['const'])}`"
    if "enum" in prop:
        return " \\| ".join(f"`{_json(v)}`" for v in prop["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in prop:
            return " \\| ".join(_schema_type(p) for p in prop[key])
    kind = prop.get("type")
    if kind == "array":
        items = prop.get("items")
        if isinstance(items, dict) and items:
            return f"list of {_schema_type(items)}"
        prefix = prop.get("prefixItems")
        if prefix:
            return "[" + ", ".join(_schema_type(p) for p in prefix) + "]"
        return "list"
    if kind == "object":
        extra = prop.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            return f"map of {_schema_type(extra)}"
        return "object"
    if isinstance(kind, list):
        return " \\| ".join(kind)
    if kind:
        fmt = prop.get("format")
        return f"{kind} ({fmt})" if fmt else str(kind)
    return "any"


_LIMITS = [
    ("minimum", "≥ {}"),
    ("exclusiveMinimum", "> {}"),
    ("maximum", "≤ {}"),
    ("exclusiveMaximum", "< {}"),
    ("minLength", "length ≥ {}"),
    ("maxLength", "length ≤ {}"),
    ("minItems", "items ≥ {}"),
    ("maxItems", "items ≤ {}"),
    ("pattern", "matches `{}`"),
]


def _limits(prop: dict[str, Any]) -> str:
    found: list[str] = []

    def visit(node: dict[str, Any]) -> None:
        found.extend(template.format(node[key]) for key, template in _LIMITS if key in node)
        for key in ("anyOf", "oneOf", "allOf"):
            for sub in node.get(key, []):
                visit(sub)
        if isinstance(node.get("items"), dict):
            before = len(found)
            visit(node["items"])
            found[before:] = [f"each {limit}" for limit in found[before:]]

    visit(prop)
    return ", ".join(found) or "—"


# ---------------------------------------------------------------------------------------------
# markdown


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _text(text: str) -> str:
    """A docstring's paragraphs, each joined into one line."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def _cell(text: str) -> str:
    """Text safe inside one table cell: no line breaks, no bare pipes."""
    return " ".join(text.split()).replace("|", "\\|")


def _anchor(text: str) -> str:
    return "-".join(text.lower().replace("_", "-").split())
