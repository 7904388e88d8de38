#!/usr/bin/env python3
"""PyTorch's side of the checkpoint interop test (tests/nn/test_checkpoint_torch.cpp).

  torch_checkpoint.py write MODEL REFERENCE [mlp|resnet]
      Builds the test model (fixed seed), runs a few train-mode forwards so that
      the running statistics and num_batches_tracked are not their defaults, and
      writes its state_dict() to MODEL and an eval-mode input/output pair
      ("input", "output"; metadata "train_steps") to REFERENCE.
  torch_checkpoint.py check MODEL REFERENCE [mlp|resnet]
      Loads MODEL (a syncbn checkpoint) into the test model with
      load_state_dict(strict=True), after checking that its names come in
      state_dict() order with the model's dtypes and shapes, and compares the
      model's eval output on REFERENCE's "input" with its "output".

Exit status 0 when everything matches, 1 with a message on stderr otherwise,
2 for a usage error. Debian has no safetensors package, so the files are read
and written here by hand (json + struct + torch) in the safetensors format.
"""

import collections
import json
import struct
import sys

import torch

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16, "I64": torch.int64}
CODES = {dtype: code for code, dtype in DTYPES.items()}
# Integer views of the same width, to get the bytes of dtypes numpy lacks.
BIT_VIEWS = {torch.bfloat16: torch.int16}
SEED = 1234
# The ResNet of test_checkpoint_torch.cpp: two stages of one block each.
RESNET_WIDTHS = (4, 8)
RESNET_BLOCKS = 1
TRAIN_STEPS = 3
# float32 results of two implementations that sum in different orders.
RTOL, ATOL = 1e-5, 1e-5


def make_mlp():
    """The architecture of test_checkpoint_torch.cpp's torch_test_model()."""
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
        torch.nn.Sequential(torch.nn.Linear(8, 3)))


class BasicBlock(torch.nn.Module):
    """syncbn's nn::BasicBlock (torchvision's names and order)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.relu = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                  torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


def make_resnet(widths=RESNET_WIDTHS, blocks=RESNET_BLOCKS, in_channels=1, classes=10):
    """syncbn's nn::resnet(): conv1, bn1, relu, layer1..K, avgpool, flatten, fc."""
    layers = [("conv1", torch.nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)),
              ("bn1", torch.nn.BatchNorm2d(widths[0])), ("relu", torch.nn.ReLU())]
    channels = widths[0]
    for stage, width in enumerate(widths):
        stage_blocks = []
        for b in range(blocks):
            stage_blocks.append(BasicBlock(channels, width, 2 if stage > 0 and b == 0 else 1))
            channels = width
        layers.append(("layer%d" % (stage + 1), torch.nn.Sequential(*stage_blocks)))
    layers += [("avgpool", torch.nn.AdaptiveAvgPool2d(1)), ("flatten", torch.nn.Flatten()),
               ("fc", torch.nn.Linear(channels, classes))]
    return torch.nn.Sequential(collections.OrderedDict(layers))


MODELS = {"mlp": (make_mlp, (4,)), "resnet": (make_resnet, (1, 8, 8))}


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata} if metadata else {}
    chunks, offset = [], 0
    for name, tensor in tensors.items():
        tensor = tensor.detach().contiguous().cpu()
        view = tensor.view(BIT_VIEWS.get(tensor.dtype, tensor.dtype))
        data = view.numpy().tobytes()
        header[name] = {"dtype": CODES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for data in chunks:
            f.write(data)


def read_safetensors(path):
    """The tensors (in data order, as a list of pairs) and the metadata."""
    with open(path, "rb") as f:
        data = f.read()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    buffer = data[8 + size:]
    metadata = header.pop("__metadata__", {})
    tensors = []
    for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"]):
        begin, end = entry["data_offsets"]
        dtype = DTYPES[entry["dtype"]]
        if begin == end:  # frombuffer refuses an empty buffer
            tensors.append((name, torch.empty(entry["shape"], dtype=dtype)))
            continue
        raw = torch.frombuffer(bytearray(buffer[begin:end]), dtype=torch.uint8)
        tensors.append((name, raw.view(dtype).reshape(entry["shape"]).clone()))
    return tensors, metadata


def fail(message):
    print("torch_checkpoint.py: " + message, file=sys.stderr)
    sys.exit(1)


def write(model_path, reference_path, kind):
    torch.manual_seed(SEED)
    make_model, sample = MODELS[kind]
    model = make_model()
    model.train()
    with torch.no_grad():
        for _ in range(TRAIN_STEPS):
            model(torch.randn(16, *sample) * 2.0 + 0.5)
        model.eval()
        x = torch.randn(5, *sample)
        y = model(x)
    write_safetensors(model_path, model.state_dict(), {"format": "pt"})
    write_safetensors(reference_path, {"input": x, "output": y}, {"train_steps": str(TRAIN_STEPS)})


def check(model_path, reference_path, kind):
    model = MODELS[kind][0]()
    expected = model.state_dict()
    tensors, _ = read_safetensors(model_path)
    names = [name for name, _ in tensors]
    if names != list(expected.keys()):
        fail("%s: names %s, expected state_dict() order %s" % (model_path, names, list(expected.keys())))
    # load_state_dict would convert dtypes silently: check them first.
    for name, tensor in tensors:
        want = expected[name]
        if tensor.dtype != want.dtype or tensor.shape != want.shape:
            fail("%s: '%s' is %s %s, expected %s %s" % (model_path, name, tensor.dtype, tuple(tensor.shape),
                                                       want.dtype, tuple(want.shape)))
    try:
        model.load_state_dict(dict(tensors), strict=True)
    except RuntimeError as error:
        fail("%s: load_state_dict(strict=True) failed: %s" % (model_path, error))
    reference = dict(read_safetensors(reference_path)[0])
    model.eval()
    with torch.no_grad():
        y = model(reference["input"])
    if y.shape != reference["output"].shape or not torch.allclose(y, reference["output"], rtol=RTOL, atol=ATOL):
        fail("%s: PyTorch's eval output %s differs from syncbn's %s (largest difference %g)" % (
            model_path, y.tolist(), reference["output"].tolist(),
            (y - reference["output"]).abs().max().item() if y.shape == reference["output"].shape else float("nan")))


def main(argv):
    if len(argv) not in (4, 5) or argv[1] not in ("write", "check") or (len(argv) == 5 and argv[4] not in MODELS):
        print(__doc__, file=sys.stderr)
        return 2
    if sys.byteorder != "little":
        fail("safetensors files are little-endian, expected a little-endian host")
    kind = argv[4] if len(argv) == 5 else "mlp"
    (write if argv[1] == "write" else check)(argv[2], argv[3], kind)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
