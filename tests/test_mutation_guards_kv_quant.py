"""KIVI-style 4/2-bit key/value storage (kernels/kv_quant.py): behaviour the mutation run
found unguarded (issue 14). Codes and stats are stored in record files, so their layout is
part of the file format; the error bound is what the int4/int2 choice promises."""
import pytest
import torch

from precise_edit.kernels import kv_quant as q


def test_codes_are_packed_low_bits_first():
    """The packing order is the record file format: a file written earlier must decode the same."""
    ramp = torch.arange(16, dtype=torch.float32).view(1, 1, 1, 16)  # codes 0..15 in one value group
    p4, s4, m4 = q.quantize_values(ramp, 4, group=16)
    assert p4.flatten().tolist() == [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]
    assert torch.equal(q.dequantize_values(p4, s4, m4, 4).round(), ramp)
    ramp2 = torch.tensor([0.0, 1, 2, 3, 3, 2, 1, 0]).view(1, 1, 1, 8)
    p2, s2, m2 = q.quantize_values(ramp2, 2, group=8)
    assert p2.flatten().tolist() == [0b11100100, 0b00011011]
    assert torch.equal(q.dequantize_values(p2, s2, m2, 2).round(), ramp2)


def test_head_sizes_that_cannot_be_packed_are_refused():
    with pytest.raises(q.QuantError) as e:
        q.quantize_keys(torch.zeros(1, 1, 4, 6), 2)
    assert str(e.value) == "head size 6 is not a multiple of 4 (2-bit codes are packed 4 per byte)"
    with pytest.raises(q.QuantError) as e:
        q.quantize_values(torch.zeros(1, 1, 4, 12), 4, group=8)
    assert str(e.value) == "head size 12 is not a multiple of the value group size 8"
    assert q.packed_dim(12, 4) == 6 and q.packed_dim(12, 2) == 3


@pytest.mark.parametrize("bits", [4, 2])
def test_key_groups_of_tokens_with_a_short_last_group(bits):
    """37 tokens in groups of 8: 5 groups, the last of 5 tokens; every token decodes within
    half its own group's scale, and a group with a large range does not spoil the others."""
    k = torch.randn(1, 2, 37, 8, generator=torch.Generator().manual_seed(0))
    k[:, :, 36] *= 100  # the last (short) group holds an outlier token
    p, s, m = q.quantize_keys(k, bits, group=8)
    assert s.shape == m.shape == (1, 2, 5, 8) == q.key_stat_shape(k.shape, 8)
    assert s.dtype == m.dtype == torch.bfloat16
    k2 = q.dequantize_keys(p, s, m, bits, group=8)
    bound = q.error_bound(s, "k", k.shape, group=8)
    assert bound.shape == k.shape
    assert ((k2 - k).abs() <= bound * (1 + 1e-5) + 1e-6).all()
    assert (k2 - k)[:, :, :32].abs().max() < 3.5 / ((1 << bits) - 1)  # the first four groups keep their precision


@pytest.mark.parametrize("bits", [4, 2])
def test_value_groups_of_channels(bits):
    v = torch.randn(1, 2, 5, 16, generator=torch.Generator().manual_seed(1))
    v[..., 15] *= 100  # the second channel group holds an outlier channel
    p, s, m = q.quantize_values(v, bits, group=8)
    assert s.shape == m.shape == (1, 2, 5, 2) == q.value_stat_shape(v.shape, 8)
    v2 = q.dequantize_values(p, s, m, bits)
    bound = q.error_bound(s, "v", v.shape, group=8)
    assert bound.shape == v.shape and ((v2 - v).abs() <= bound * (1 + 1e-5) + 1e-6).all()
    assert (v2 - v)[..., :8].abs().max() < 3.5 / ((1 << bits) - 1)


def test_stats_cover_the_group_so_no_code_is_clamped():
    """The stored minimum is at or below the group's minimum and min + 15 * scale at or above
    its maximum, even after rounding to bfloat16 (negative and positive groups)."""
    base = torch.rand(1, 1, 3, 128, generator=torch.Generator().manual_seed(2)) * 3
    zero_min = base - base.amin(-1, keepdim=True).amin(2, keepdim=True)  # groups whose minimum is exactly 0
    zero_min[:, :, :, 0] = 0
    for x in (base + 1.3, -(base + 1.3), zero_min):
        _, s, m = q.quantize_values(x, 4)
        assert (m.float() <= x.amin(-1, keepdim=True)).all()
        assert (m.float() + 15 * s.float() >= x.amax(-1, keepdim=True)).all()
        _, sk, mk = q.quantize_keys(x, 4)
        assert (mk.float() <= x.amin(2, keepdim=True)).all()
        assert (mk.float() + 15 * sk.float() >= x.amax(2, keepdim=True)).all()



def test_values_of_a_batch_decode_per_image():
    v = torch.randn(2, 2, 3, 16, generator=torch.Generator().manual_seed(3))
    v[1] *= 50  # the second image's values have another range
    p, s, m = q.quantize_values(v, 4, group=8)
    v2 = q.dequantize_values(p, s, m, 4)
    assert v2.shape == v.shape
    assert ((v2 - v).abs() <= q.error_bound(s, "v", v.shape, group=8) * (1 + 1e-5) + 1e-6).all()


@pytest.mark.parametrize("storage", ["int4", "int2"])
def test_low_bit_records_have_integer_shapes_any_safetensors_reader_accepts(tmp_path, storage):
    """Packed and stat shapes go into the file header: they must be integers."""
    from safetensors import safe_open
    from test_mutation_guards_kv_disk import write

    path = tmp_path / "q.bgkv.safetensors"
    write(path, storage)
    with safe_open(str(path), framework="pt") as f:
        assert f.get_slice("kv.k.0.double.0").get_shape() == [1, 2, 3, 8 * q.BITS[storage] // 8]
        assert f.get_slice("kv.vs.0.double.0").get_shape() == [1, 2, 3, 1]
