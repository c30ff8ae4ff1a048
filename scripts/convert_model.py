#!/usr/bin/env python3
"""Converts a PyTorch state dict saved in the legacy (pre-1.6, non-zip) serialization into
safetensors, with the Python standard library alone (no torch):

  convert_model.py IN.pth OUT.safetensors

The legacy file is five pickles (magic number, protocol version, system info, the state dict
whose tensors point at storages by persistent id, the list of storage keys) followed by each
storage's data in that order: an 8-byte little-endian element count, then the raw elements.
Float tensors are written as F32; integer bookkeeping (BatchNorm's num_batches_tracked) is left
out. Prints the number of tensors and parameters written."""
import array
import collections
import itertools
import os
import json
import pickle
import struct
import sys

MAGIC = 0x1950A86A20F9469CFC6C
ELEMENT_SIZE = {"FloatStorage": 4, "LongStorage": 8, "IntStorage": 4, "DoubleStorage": 8}


class TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


class StorageType:
    def __init__(self, name):
        self.name = name


def rebuild_tensor(storage, offset, size, stride, *_rest):
    return TensorRef(storage, offset, size, stride)


class LegacyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "torch" and name.endswith("Storage"):
            return StorageType(name)
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return rebuild_tensor
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    def persistent_load(self, saved_id):
        kind, storage_type, key, _location, numel, _view = saved_id
        assert kind == "storage", saved_id
        return (storage_type.name, key, numel)


def contiguous_strides(size):
    strides, step = [], 1
    for dim in reversed(size):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))


def gather(storage, ref):
    """The tensor's float32 elements in row-major order, whatever its strides."""
    if ref.stride == contiguous_strides(ref.size):
        return storage[ref.offset * 4:(ref.offset + prod(ref.size)) * 4]
    values = memoryview(storage).cast("f")
    out = array.array("f")
    for index in itertools.product(*(range(d) for d in ref.size)):
        out.append(values[ref.offset + sum(i * s for i, s in zip(index, ref.stride))])
    return out.tobytes()


def prod(size):
    count = 1
    for dim in size:
        count *= dim
    return count


def main(source, target):
    with open(source, "rb") as f:
        if pickle.load(f) != MAGIC:
            sys.exit(f"{source}: not a legacy PyTorch file (magic number)")
        pickle.load(f)  # protocol version
        pickle.load(f)  # system info
        state = LegacyUnpickler(f).load()
        keys = pickle.load(f)
        types = {}
        for ref in state.values():
            types[ref.storage[1]] = ref.storage[0]
        storages = {}
        for key in keys:
            (numel,) = struct.unpack("<q", f.read(8))
            storages[key] = f.read(numel * ELEMENT_SIZE[types[key]])
    header, chunks, offset, params = {}, [], 0, 0
    for name, ref in state.items():
        kind, key, _ = ref.storage
        if kind != "FloatStorage":
            continue
        count = prod(ref.size)
        data = gather(storages[key], ref)
        header[name] = {"dtype": "F32", "shape": list(ref.size), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
        params += count
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(target + ".tmp", "wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for chunk in chunks:
            out.write(chunk)
    os.replace(target + ".tmp", target)
    print(f"{len(header)} tensors, {params} parameters")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
