"""The forward and backward pass as equations in the textbook's δ notation, from the final graph.

Each statement worth a line gets an equation (the outputs, fused kernels, values read more than
once); everything else is written inline where it is read (a transpose as ᵀ, a matmul by
juxtaposition, a cheap elementwise op into the expression that reads it). Kernel bodies are
SymPy expressions printed by SymPy's LaTeX printer, with two readings a textbook makes:
σ(z)(1 − σ(z)) is σ′(z) and 1 − tanh²(z) is tanh′(z), where z is the pre-activation the
forward graph named (`z2`). Names follow the user's: `W1` -> W¹, `dz2` -> δ², the gradient of
a parameter -> ∂L/∂W¹; elementwise products are ⊙.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sympy as sp
from sympy.printing.latex import LatexPrinter

from ..ir.node import NAMES, Node
from ..ir.traverse import toposort
from ..ops import sympy_funcs as sf
from ..ops.leaves import const_value
from ..ops.registry import get_op

# cheap forward elementwise ops written into the expression that reads them: (a² − y)
INLINE_FORWARD = ("add", "sub", "neg", "mul", "div")
TRANSPARENT = ("broadcast_to", "stop_gradient", "cast")


@dataclass(frozen=True)
class Equation:
    """`lhs = rhs` in LaTeX; section is "forward" or "backward"."""

    lhs: str
    rhs: str
    section: str

    def __str__(self) -> str:
        return f"{self.lhs} = {self.rhs}"


class SigmoidPrime(sp.Function):
    """σ′(z) = σ(z)(1 − σ(z)), for printing only."""

    def _latex(self, printer: Any) -> str:
        return rf"\sigma'\left({printer._print(self.args[0])}\right)"


class TanhPrime(sp.Function):
    """tanh′(z) = 1 − tanh²(z), for printing only."""

    def _latex(self, printer: Any) -> str:
        return rf"\tanh'\left({printer._print(self.args[0])}\right)"


def math_name(name: str) -> str:
    """`W1` -> W^{1}, `dz2` -> \\delta^{2}, `err` -> \\mathrm{err}, `x` -> x."""
    m = re.fullmatch(r"d(?:z|delta)(\d+)", name)
    if m:
        return rf"\delta^{{{m.group(1)}}}"
    m = re.fullmatch(r"([A-Za-z])(\d+)", name)
    if m:
        return f"{m.group(1)}^{{{m.group(2)}}}"
    m = re.fullmatch(r"([A-Za-z]+)_?(\d+)", name)
    if m:
        return rf"\mathrm{{{m.group(1)}}}^{{{m.group(2)}}}"
    if re.fullmatch(r"[A-Za-z]", name):
        return name
    return r"\mathrm{" + name.replace("_", r"\_") + "}"


def partial(of: str) -> str:
    return rf"\frac{{\partial L}}{{\partial {of}}}"


class _Printer(LatexPrinter):
    """SymPy's LaTeX printer with opaque operands, ⊙ for products, σ for sigmoid."""

    def __init__(self, atoms: dict[sp.Symbol, str]):
        super().__init__({"mul_symbol": None})
        self.atoms = atoms

    def _print_Symbol(self, expr, style="plain"):
        return self.atoms.get(expr) or super()._print_Symbol(expr)

    def _print_Float(self, expr):
        return f"{float(expr):.6g}"  # float32 constants, as the code shows them

    def _print_sigmoid(self, expr, exp=None):
        s = rf"\sigma\left({self._print(expr.args[0])}\right)"
        return f"{s}^{{{exp}}}" if exp else s

    def _print_Mul(self, expr):
        c, rest = expr.as_coeff_Mul()
        factors = sp.Mul.make_args(rest)
        if any(f.is_Pow and f.exp.is_negative for f in factors) or len(factors) < 2:
            return super()._print_Mul(expr)
        # values first, derivatives last: (a² − y) ⊙ σ′(z²), as the textbook writes it
        factors = sorted(factors, key=lambda f: (isinstance(f, (SigmoidPrime, TanhPrime)),
                                                 sp.default_sort_key(f)))
        body = r" \odot ".join(self.parenthesize(f, 50) for f in factors)
        if c == 1:
            return body
        if c == -1:
            return "-" + body
        return f"{self._print(c)} {body}"


class _Writer:
    def __init__(self, outputs: list[Node], wrt_names: list[str], forward_names: dict,
                 labels: list[str] | None = None):
        self.outputs = outputs
        self.forward = set(toposort(outputs[:1]))
        self.order = toposort(outputs)
        self.uses: dict[Node, int] = {}
        for n in self.order:
            for i in n.inputs:
                self.uses[i] = self.uses.get(i, 0) + 1
        for o in outputs:
            self.uses[o] = self.uses.get(o, 0) + 1
        self.out_lhs = {outputs[0]: "L"}
        for o, w in zip(outputs[1:], wrt_names):
            self.out_lhs.setdefault(o, partial(math_name(w)))
        if labels is not None:  # bp.function: outputs by their names, no loss
            self.out_lhs = {}
            for o, lab in zip(outputs, labels):
                self.out_lhs.setdefault(o, math_name(lab))
        self.fwd_names = forward_names  # kernel name -> (activation op, pre-activation name)
        self.atoms: dict[sp.Symbol, str] = {}
        self.products: set[sp.Symbol] = set()  # atoms that are matmuls
        self.value: dict[Node, sp.Expr] = {}  # what reading a node writes
        self.eqs: list[Equation] = []
        self.fresh = 0

    def atom(self, latex: str) -> sp.Symbol:
        s = sp.Symbol(f"q{len(self.atoms):05d}")
        self.atoms[s] = latex
        return s

    def printer(self) -> _Printer:
        return _Printer(self.atoms)

    def tex(self, e: sp.Expr) -> str:
        return self.printer().doprint(e)

    def name_of(self, n: Node) -> str:
        if n in self.out_lhs:
            return self.out_lhs[n]
        name = NAMES.get(n)
        if name and name not in ("loss",):
            return math_name(name)
        self.fresh += 1
        return f"t_{{{self.fresh}}}"

    def own_line(self, n: Node) -> bool:
        if n in self.out_lhs or n.results is not None:
            return True
        if n.op in ("transpose",) + TRANSPARENT:
            return False
        if n in self.forward and n.op in INLINE_FORWARD:
            return False
        return n.op == "kernel" or self.uses.get(n, 0) > 1

    def run(self) -> list[Equation]:
        for n in self.order:
            if n.op in ("input", "param"):
                self.value[n] = self.atom(math_name(n.attr("name")))
                continue
            if n.op == "const":
                v = np.asarray(const_value(n))
                self.value[n] = (sp.sympify(v.item()) if v.ndim == 0
                                 else self.atom(rf"\mathrm{{const}}_{{{list(v.shape)}}}"))
                continue
            section = "forward" if n in self.forward else "backward"
            rhs = self.expr(n)
            if not self.own_line(n):
                self.value[n] = rhs
                continue
            lhs = self.name_of(n)
            pre = self.preactivation(n)
            if pre is not None:  # z = x W + b, a = σ(z): the textbook's two lines
                zname, arg, act = pre
                self.eqs.append(Equation(zname, self.tex(arg), section))
                rhs = act(self.atom(zname))
            self.eqs.append(Equation(lhs, self.tex(rhs), section))
            self.value[n] = self.atom(lhs)
        return self.eqs

    def operands(self, n: Node) -> list[sp.Expr]:
        return [self.value[i] for i in n.inputs]

    def preactivation(self, n: Node):
        """(name, argument, activation) when kernel n applies an activation the forward graph
        applied to a value it named (a2 = sigmoid(z2)): the kernel's argument is that z."""
        if n.op != "kernel" or n not in self.forward:
            return None
        found = self.fwd_names.get(NAMES.get(n) or n.attr("name"))
        body = n.attr("expr")
        if found is None or not isinstance(body, sp.Function) or len(body.args) != 1:
            return None
        op, zname = found
        if type(body).__name__ != op:
            return None
        arg = _bind(body.args[0], self.operands(n))
        return math_name(zname), arg, body.func

    def expr(self, n: Node) -> sp.Expr:
        a = self.operands(n)
        op = n.op
        if op == "kernel":
            return self.derivatives(_bind(n.attr("expr"), a), n)
        if op in TRANSPARENT:
            return a[0]
        if op == "transpose":
            base = self.group(a[0])
            return self.atom(("{" + base + "}" if "^" in base else base) + r"^{\top}")
        if op == "matmul":
            m = self.atom(f"{self.group(a[0], True)} {self.group(a[1], True)}")
            self.products.add(m)
            return m
        if op in ("sum", "max"):
            axes = n.attr("axes")
            sub = "" if len(axes) == n.inputs[0].ndim else "_{" + ",".join(map(str, axes)) + "}"
            big = r"\sum" if op == "sum" else r"\max"
            return self.atom(f"{big}{sub} {self.group(a[0])}")
        form = get_op(op).sympy if op not in ("result",) else None
        if form is not None and n.inputs:
            try:
                return form(*a)
            except TypeError:
                pass
        args = ", ".join(self.tex(x) for x in a)
        name = op.replace("_", r"\_") + (f"_{{{n.attr('index')}}}" if op == "result" else "")
        return self.atom(rf"\mathrm{{{name}}}\left({args}\right)")

    def group(self, e: sp.Expr, product: bool = False) -> str:
        """e's LaTeX, in parentheses unless it is one atom, or (`product`: a matmul operand)
        itself a matmul, which is associative."""
        text = self.tex(e)
        if isinstance(e, sp.Symbol) and (not re.search(r"\s", text)
                                         or (product and e in self.products)):
            return text
        return rf"\left({text}\right)"

    def derivatives(self, e: sp.Expr, n: Node) -> sp.Expr:
        """σ(z)(1 − σ(z)) -> σ′(z), 1 − tanh²(z) -> tanh′(z), also where the kernel reads the
        forward activation a = σ(z) rather than recomputing it."""
        for s in list(e.atoms(sf.sigmoid)):
            e = e.subs(s * (1 - s), SigmoidPrime(s.args[0]))
        for t in list(e.atoms(sp.tanh)):
            e = e.subs(1 - t**2, TanhPrime(t.args[0]))
        for src in n.inputs:
            found = self.fwd_names.get(NAMES.get(src) or (src.attr("name") if src.op == "kernel"
                                                          else None))
            if found is None or src.op != "kernel":
                continue
            op, zname = found
            a = self.value[src]
            z = self.atom(math_name(zname))
            if op == "sigmoid":
                e = e.subs(a * (1 - a), SigmoidPrime(z))
            elif op == "tanh":
                e = e.subs(1 - a**2, TanhPrime(z))
        return e


def _bind(expr: sp.Expr, operands: list[sp.Expr]) -> sp.Expr:
    """A kernel body with its argument symbols a0, a1, ... replaced by the operands."""
    by_name = {s.name: s for s in expr.free_symbols}
    return expr.xreplace({by_name[f"a{i}"]: v for i, v in enumerate(operands)
                          if f"a{i}" in by_name})


def _activations(forward_outputs: list[Node]) -> dict[str, tuple[str, str]]:
    """name of an activation in the forward graph -> (its op, the name of its argument):
    `a2` -> ("sigmoid", "z2"), read from the graph as the user declared it."""
    out = {}
    for n in toposort(forward_outputs):
        if n.op in ("sigmoid", "tanh") and n in NAMES and n.inputs[0] in NAMES:
            out[NAMES[n]] = (n.op, NAMES[n.inputs[0]])
    return out


def equations(program: Any) -> list[Equation]:
    """The equations of a compiled program's final graph (forward, then backward)."""
    final = program.stages[-1].outputs
    wrt = getattr(program, "grad_names", None)
    labels = None if wrt is not None else list(program.labels)
    return _Writer(final, list(wrt or []), _activations(program.stages[0].outputs),
                   labels).run()


def to_latex(program: Any) -> str:
    """LaTeX: an `aligned` block per section, with a comment naming the program."""
    eqs = equations(program)
    parts = [f"% {program._title()}"]
    for section in ("forward", "backward"):
        rows = [e for e in eqs if e.section == section]
        if rows:
            body = " \\\\\n".join(f"  {e.lhs} &= {e.rhs}" for e in rows)
            parts.append(f"% {section}\n\\begin{{aligned}}\n{body}\n\\end{{aligned}}")
    return "\n".join(parts) + "\n"


def to_markdown(program: Any) -> str:
    """Markdown with `$$` display math (GitHub, Jupyter and most renderers show it)."""
    eqs = equations(program)
    parts = [f"<!-- {program._title()} -->"]
    for section in ("forward", "backward"):
        rows = [e for e in eqs if e.section == section]
        if rows:
            body = " \\\\\n".join(f"{e.lhs} &= {e.rhs}" for e in rows)
            parts.append(f"## {section.capitalize()}\n\n$$\n\\begin{{aligned}}\n{body}\n"
                         "\\end{aligned}\n$$")
    return "\n\n".join(parts) + "\n"


def _mathtext(s: str) -> str:
    """LaTeX for matplotlib's mathtext, which has no \\operatorname in older versions."""
    return s.replace(r"\operatorname", r"\mathrm")


def render_png(program: Any, path: str | Path, dpi: int = 150) -> Path:
    """The equations as a PNG through matplotlib's mathtext (no LaTeX installation needed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("equation images need matplotlib: pip install 'bpcompile[viz]'") from e
    eqs = equations(program)
    lines = []
    for section in ("forward", "backward"):
        rows = [e for e in eqs if e.section == section]
        if rows:
            lines.append((section.capitalize(), False))
            lines += [(f"${_mathtext(e.lhs)} = {_mathtext(e.rhs)}$", True) for e in rows]
    height = 0.45 * len(lines) + 0.3
    fig = plt.figure(figsize=(9, height))
    for k, (text, math) in enumerate(lines):
        fig.text(0.02 if not math else 0.05, 1 - (k + 0.8) * 0.45 / height, text,
                 fontsize=13 if math else 12, weight="normal" if math else "bold")
    p = Path(path)
    fig.savefig(p, dpi=dpi)
    plt.close(fig)
    return p
