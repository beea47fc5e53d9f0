"""Structural check of an ELF relocatable object before LLVM's loader maps it.

LLVM's RuntimeDyld trusts the object it is given: a section whose offset/size runs past the
end of the file, a symbol with an invalid section index, an unknown relocation type or an
unresolvable external symbol ends in `report_fatal_error` (the process aborts) or in writes
out of bounds, never in a Python exception. The cache only loads objects it wrote itself (the
entry's MAC, see cache.py); this check is the second line: every table the loader walks is
bounds-checked here, so a damaged object is a cache miss, not a dead process. It does not
judge the machine code inside the sections (nothing structural can).
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
SHDR = struct.Struct("<IIQQQQIIQQ")
SYM = struct.Struct("<IBBHQQ")
RELA = struct.Struct("<QQq")

ET_REL = 1
SHT_NULL, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA = 0, 1, 2, 3, 4
SHT_NOTE, SHT_NOBITS = 7, 8
SHT_INIT_ARRAY, SHT_FINI_ARRAY = 14, 15
SHT_X86_64_UNWIND = 0x70000001
SHT_LLVM_ADDRSIG = 0x6FFF4C03
ALLOWED_SECTIONS = {SHT_NULL, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOTE,
                    SHT_NOBITS, SHT_INIT_ARRAY, SHT_FINI_ARRAY, SHT_X86_64_UNWIND,
                    SHT_LLVM_ADDRSIG}
SHN_UNDEF, SHN_ABS, SHN_COMMON = 0, 0xFFF1, 0xFFF2
# write, alloc, exec, merge, strings, info-link, link-order, processor-specific (x86-64
# large); not TLS (RuntimeDyld aborts: "allocation of TLS not implemented"), group, compressed
SECTION_FLAGS = 0x1 | 0x2 | 0x4 | 0x10 | 0x20 | 0x40 | 0x80 | 0xF0000000
MAX_ALIGN = 1 << 12

# e_machine per target-triple architecture, and the relocation types (-> bytes patched) that
# LLVM's x86-64 code generator emits and RuntimeDyldELF implements. Other architectures get
# the structural checks without the relocation whitelist.
MACHINES = {"x86_64": 62, "aarch64": 183, "arm64": 183}
X86_64_RELOCS = {0: 0, 1: 8, 2: 4, 4: 4, 9: 4, 10: 4, 11: 4, 24: 8, 25: 8, 26: 4, 41: 4, 42: 4}
RELOCS = {62: X86_64_RELOCS}


def machine_for(triple: str) -> int | None:
    """The ELF e_machine for an LLVM target triple, or None where the check does not apply."""
    if sys.byteorder != "little":
        return None
    return MACHINES.get(triple.split("-", 1)[0])


def _cstr(table: bytes, off: int) -> bytes | None:
    end = table.find(b"\0", off)
    return None if off >= len(table) or end < 0 else table[off:end]


def check(data: bytes, machine: int, resolve: Callable[[str], bool]) -> str | None:
    """None when `data` is a well-formed little-endian ELF64 relocatable object for `machine`
    whose every undefined global symbol `resolve`s; otherwise the first problem found."""
    n = len(data)
    if n < EHDR.size:
        return "shorter than an ELF header"
    (ident, etype, emach, _ver, _entry, _phoff, shoff, _flags, ehsize, _phentsize, phnum,
     shentsize, shnum, shstrndx) = EHDR.unpack_from(data)
    if ident[:7] != b"\x7fELF\x02\x01\x01":
        return "not a little-endian ELF64 object"
    if etype != ET_REL or emach != machine or phnum or ehsize != EHDR.size:
        return f"not a relocatable object for machine {machine}"
    if shentsize != SHDR.size or not 0 < shnum < SHN_ABS or shoff + shnum * SHDR.size > n:
        return "section header table out of bounds"
    secs = [SHDR.unpack_from(data, shoff + i * SHDR.size) for i in range(shnum)]
    if secs[0][1] != SHT_NULL or not 0 < shstrndx < shnum or secs[shstrndx][1] != SHT_STRTAB:
        return "bad section 0 or section-name table"
    for i, (_nm, typ, flags, _a, off, size, link, _info, align, _es) in enumerate(secs[1:], 1):
        if typ not in ALLOWED_SECTIONS or flags & ~SECTION_FLAGS:
            return f"section {i}: unexpected type {typ:#x} or flags {flags:#x}"
        if typ != SHT_NOBITS and off + size > n:
            return f"section {i}: contents out of bounds"
        if link >= shnum or align > MAX_ALIGN or align & (align - 1):
            return f"section {i}: bad link or alignment"
    shstr = _sec(data, secs[shstrndx])
    symtabs = [i for i, s in enumerate(secs) if s[1] == SHT_SYMTAB]
    for i, s in enumerate(secs):
        if _cstr(shstr, s[0]) is None and i:
            return f"section {i}: name out of bounds"
        if s[1] == SHT_STRTAB and s[5] and data[s[4] + s[5] - 1] != 0:
            return f"section {i}: string table not NUL-terminated"
    if len(symtabs) > 1:
        return "more than one symbol table"
    sizes = [s[5] for s in secs]
    nsyms = 0
    if symtabs:
        st = secs[symtabs[0]]
        if st[9] != SYM.size or st[5] % SYM.size or secs[st[6]][1] != SHT_STRTAB:
            return "malformed symbol table"
        strtab = _sec(data, secs[st[6]])
        syms = list(SYM.iter_unpack(_sec(data, st)))
        nsyms = len(syms)
        for j, (name, info, _other, shndx, value, size) in enumerate(syms):
            sym = _cstr(strtab, name)
            if sym is None or info & 0xF > 4 or info >> 4 > 2:
                return f"symbol {j}: bad name or type"
            if shndx == SHN_UNDEF:
                if j and info >> 4 == 1 and not resolve(sym.decode("latin-1")):
                    return f"symbol {sym!r}: undefined and not resolvable"
            elif shndx not in (SHN_ABS, SHN_COMMON) and (
                    shndx >= shnum or value + size > sizes[shndx]):
                return f"symbol {j}: section index or value out of bounds"
    widths = RELOCS.get(machine)
    for i, (_nm, typ, _fl, _a, _off, size, link, info, _al, entsize) in enumerate(secs):
        if typ != SHT_RELA:
            continue
        if (entsize != RELA.size or size % RELA.size or not symtabs or link != symtabs[0]
                or not 0 < info < shnum or secs[info][1] not in (SHT_PROGBITS,
                                                                SHT_X86_64_UNWIND,
                                                                SHT_INIT_ARRAY,
                                                                SHT_FINI_ARRAY)):
            return f"section {i}: malformed relocation table"
        limit = sizes[info]
        for r_off, r_info, _addend in RELA.iter_unpack(_sec(data, secs[i])):
            rtype, rsym = r_info & 0xFFFFFFFF, r_info >> 32
            width = 1 if widths is None else widths.get(rtype)
            if width is None or rsym >= max(nsyms, 1) or r_off + width > limit:
                return f"section {i}: relocation {rtype} / symbol {rsym} out of bounds"
    return None


def _sec(data: bytes, s: tuple) -> bytes:
    return data[s[4]:s[4] + s[5]]
