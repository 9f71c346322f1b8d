"""What CPU a figure was measured on, from /proc/cpuinfo: every speed figure names it, since the
project's machines change generation (AMD Zen 4 until 2026-11, Zen 5 since)."""
import re

# The instruction-set extensions the convolutions and matmuls use (oneDNN picks its kernels by
# them): full-width AVX-512, its bfloat16 and int8 dot products, Intel's AMX tiles.
FLAGS = ('avx512f', 'avx512_bf16', 'avx512_vnni', 'avx_vnni', 'amx_tile', 'amx_bf16',
         'amx_int8')
# AMD's families by generation ('cpu family' in /proc/cpuinfo; 25 is Zen 3 and Zen 4).
AMD_GENERATIONS = {23: 'Zen / Zen 2', 25: 'Zen 3 / Zen 4', 26: 'Zen 5'}


def _first_processor(cpuinfo):
    fields = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(':')
                fields[key.strip()] = re.sub(r'\s+', ' ', value.strip())
    except OSError:
        pass
    return fields


def cpu_name(cpuinfo='/proc/cpuinfo'):
    """The model name of the first processor in /proc/cpuinfo ('unknown CPU' if none)."""
    return _first_processor(cpuinfo).get('model name', 'unknown CPU')


def cpu_description(cpuinfo='/proc/cpuinfo'):
    """The first processor: {'name', 'vendor', 'family', 'model', 'generation', 'flags'}
    ('generation' for AMD's known families, else None; 'flags' those of `FLAGS` it has)."""
    fields = _first_processor(cpuinfo)
    family = int(fields['cpu family']) if fields.get('cpu family', '').isdigit() else None
    vendor = fields.get('vendor_id')
    flags = set(fields.get('flags', '').split())
    return {'name': fields.get('model name', 'unknown CPU'), 'vendor': vendor, 'family': family,
            'model': int(fields['model']) if fields.get('model', '').isdigit() else None,
            'generation': AMD_GENERATIONS.get(family) if vendor == 'AuthenticAMD' else None,
            'flags': [flag for flag in FLAGS if flag in flags]}


def describe_cpu(description):
    """One phrase, e.g. 'AMD EPYC (AuthenticAMD family 26 model 2: Zen 5; avx512f avx512_bf16
    avx512_vnni avx_vnni)'."""
    where = f'{description["vendor"]} family {description["family"]} model {description["model"]}'
    if description['generation']:
        where += f': {description["generation"]}'
    return f'{description["name"]} ({where}; {" ".join(description["flags"]) or "no AVX-512"})'
