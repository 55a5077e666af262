"""Which container images a WDL workflow or task may use, found before it runs.

For ``miniwdl-podman pull``: every call of the workflow (in scatters, conditionals and
sub-workflows too) names its task's image the way miniwdl decides it when the task runs
(``runtime.inlineDockerfile``, else ``container``, else ``docker``, else ``[task_runtime]
defaults``; a ``runtime.docker`` input override wins). Expressions are evaluated with what can
be known before the run: the inputs given, declarations' defaults, and the call's own input
expressions where those are computable from them. An image that depends on anything else (a
task's output, a file's contents, a scatter's element) is reported with the reason, not
guessed. No Podman and no file system access here, apart from what WDL's standard library does
when an expression asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence, Union

from WDL import Env, Expr, StdLib, Tree, Type, Value


@dataclass(frozen=True)
class ImageUse:
    """One call's image: a name, an inline Dockerfile, or why it cannot be known yet."""

    where: str  # e.g. "call w.align (task bwa)"
    image: str = ""
    dockerfile: str = ""
    unknown: str = ""  # why the image cannot be known before the run ("" when it can)


def find(
    target: Union[Tree.Workflow, Tree.Task], inputs: Env.Bindings[Value.Base], default_image: str
) -> List[ImageUse]:
    """The images ``target`` may use, given its ``inputs`` (as ``miniwdl run`` parses them);
    ``default_image``: a task's without one (``[task_runtime] defaults``' docker, else
    miniwdl's)."""
    if isinstance(target, Tree.Task):
        return [_task_image(target, inputs, f"task {target.name}", default_image)]
    return list(_workflow(target, inputs, target.name, default_image))


def _known(
    decls: Sequence[Tree.Decl], given: Env.Bindings[Value.Base], stdlib: StdLib.Base
) -> Env.Bindings[Value.Base]:
    """The declarations' values that can be known before the run: given, or their default
    computable from what is known before them."""
    env: Env.Bindings[Value.Base] = Env.Bindings()
    for decl in decls:
        value = given.get(decl.name) if decl.name in given else _eval(decl.expr, env, stdlib)
        if value is not None:
            env = env.bind(decl.name, _coerce(value, decl.type))
    return env


def _workflow(
    wf: Tree.Workflow, given: Env.Bindings[Value.Base], prefix: str, default_image: str
) -> Iterator[ImageUse]:
    stdlib = StdLib.Base(wf.effective_wdl_version)
    env = _known(wf.inputs or [], given, stdlib)
    yield from _body(wf.body, env, given, prefix, stdlib, default_image)


def _body(
    body: Sequence[Tree.WorkflowNode],
    env: Env.Bindings[Value.Base],
    given: Env.Bindings[Value.Base],
    prefix: str,
    stdlib: StdLib.Base,
    default_image: str,
) -> Iterator[ImageUse]:
    for node in body:
        if isinstance(node, Tree.Decl):
            value = _eval(node.expr, env, stdlib)
            if value is not None:
                env = env.bind(node.name, _coerce(value, node.type))
        elif isinstance(node, Tree.Call):
            call_given = given.enter_namespace(node.name)
            call_env: Env.Bindings[Value.Base] = Env.Bindings()
            for name, expr in node.inputs.items():
                value = _eval(expr, env, stdlib)
                if value is not None:
                    call_env = call_env.bind(name, value)
            for b in call_given:
                call_env = call_env.bind(b.name, b.value)  # given for the call: they win
            where = f"call {prefix}.{node.name}"
            callee = node.callee
            if isinstance(callee, Tree.Task):
                where += f" (task {callee.name})"
                yield _task_image(callee, call_env, where, default_image)
            elif isinstance(callee, Tree.Workflow):
                yield from _workflow(callee, call_env, f"{prefix}.{node.name}", default_image)
        elif isinstance(node, Tree.WorkflowSection):
            # a scatter's element and a conditional's outcome are known only at run time:
            # what depends on them is reported as such
            yield from _body(node.body, env, given, prefix, stdlib, default_image)


def _task_image(
    task: Tree.Task, given: Env.Bindings[Value.Base], where: str, default_image: str
) -> ImageUse:
    stdlib = StdLib.Base(task.effective_wdl_version)
    env = _known(list(task.inputs or []) + list(task.postinputs), given, stdlib)
    overrides = {b.name: b.value for b in given.enter_namespace("runtime")}
    for key in ("inlineDockerfile", "container", "docker"):
        value: Optional[Value.Base] = None
        if key in overrides:
            value = overrides[key]
        elif key in task.runtime:
            try:
                value = task.runtime[key].eval(env, stdlib)
            except Exception:  # it needs what the run alone can know
                names = sorted(n for n in _identifiers(task.runtime[key]) if n not in env)
                return ImageUse(
                    where,
                    unknown=f"runtime.{key} is known only at run time"
                    + (f" (it depends on {', '.join(names)})" if names else ""),
                )
        else:
            continue
        if key == "inlineDockerfile":
            return ImageUse(where, dockerfile=_lines(value))
        return ImageUse(where, image=_first(value))
    return ImageUse(where, image=default_image)


def _identifiers(expr: Expr.Base) -> Iterator[str]:
    """The names an expression refers to."""
    if isinstance(expr, Expr.Ident):
        yield expr.name
    for child in expr.children:
        if isinstance(child, Expr.Base):
            yield from _identifiers(child)


def _eval(
    expr: Optional[Any], env: Env.Bindings[Value.Base], stdlib: StdLib.Base
) -> Optional[Value.Base]:
    """The expression's value, or None when it needs what only the run knows."""
    if expr is None:
        return None
    try:
        value: Value.Base = expr.eval(env, stdlib)
        return value
    except Exception:
        return None


def _coerce(value: Value.Base, ty: Type.Base) -> Value.Base:
    try:
        return value.coerce(ty)
    except Exception:
        return value


def _first(value: Optional[Value.Base]) -> str:
    """A ``docker``/``container`` value: a string, or the first of an array (as miniwdl)."""
    if isinstance(value, Value.Array) and value.value:
        value = value.value[0]
    return str(value.coerce(Type.String()).value) if value is not None else ""


def _lines(value: Optional[Value.Base]) -> str:
    """An ``inlineDockerfile`` value: a string, or an array of lines joined (as miniwdl)."""
    if value is None:
        return ""
    items = value.value if isinstance(value, Value.Array) else [value]
    return "\n".join(str(v.coerce(Type.String()).value) for v in items)
