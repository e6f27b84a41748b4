// Every op of ops/ops.h against PyTorch in float64 (tests/reference/ops_reference.py): forward
// and the gradients of L = sum(out * W), in f32 and, for ops with a bf16 path, in bf16.
// One test per (op, dtype); each runs all reference cases of that op and names the case,
// tensor and worst error of every mismatch.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "io/safetensors.h"
#include "ops/backend.h"
#include "ops/ops.h"
#include "tests/test_util.h"

using namespace kotoba;
using namespace kotoba::testing;

namespace {

struct RefCase {
  std::string name, op, file;
  DType dtype = DType::f32;
  std::vector<std::string> inputs, grads;
  nlohmann::json attrs;
};

struct RefIndex {
  std::string error;  // non-empty when the reference data is missing or unreadable
  uint64_t seed = 0;
  std::vector<RefCase> cases;
};

std::filesystem::path ops_reference_dir() { return reference_dir() / "ops"; }

const RefIndex& reference_index() {
  static const RefIndex index = [] {
    RefIndex r;
    auto path = ops_reference_dir() / "index.json";
    std::ifstream in(path);
    if (!in) {
      r.error = reference_missing(path);
      return r;
    }
    try {
      nlohmann::json j = nlohmann::json::parse(in);
      r.seed = j.at("seed").get<uint64_t>();
      for (const auto& c : j.at("cases")) {
        RefCase rc;
        rc.name = c.at("name");
        rc.op = c.at("op");
        rc.file = c.at("file");
        rc.dtype = c.at("dtype") == "bf16" ? DType::bf16 : DType::f32;
        rc.inputs = c.at("inputs").get<std::vector<std::string>>();
        rc.grads = c.at("grads").get<std::vector<std::string>>();
        rc.attrs = c.at("attrs");
        r.cases.push_back(std::move(rc));
      }
    } catch (const std::exception& e) {
      r.error = path.string() + ": unreadable reference index: " + e.what();
    }
    return r;
  }();
  return index;
}

// The ops under test and the dtypes each runs in; must match BF16_OPS of ops_reference.py
// (ReferenceIndex.MatchesTheOpList checks).
const std::vector<std::string> kOps = {
    "reshape", "transpose", "slice", "contiguous", "cast", "add", "sub", "mul", "div", "scale", "sum", "mean",
    "gelu", "gelu_erf", "silu", "relu", "swiglu", "matmul", "linear", "embedding", "layer_norm", "rms_norm",
    "softmax", "scaled_dot_product_attention", "attention_packed_qkv", "rope", "cross_entropy"};
const std::set<std::string> kBf16Ops = {
    "add", "sub", "mul", "div", "scale", "gelu", "gelu_erf", "silu", "relu", "swiglu", "matmul", "linear",
    "embedding", "layer_norm", "rms_norm", "softmax", "scaled_dot_product_attention", "attention_packed_qkv",
    "cross_entropy"};

struct OpPass {
  std::string op;
  DType dtype;
};
void PrintTo(const OpPass& p, std::ostream* out) { *out << p.op << " " << dtype_name(p.dtype); }

std::vector<OpPass> all_passes() {
  std::vector<OpPass> passes;
  for (const auto& op : kOps) {
    passes.push_back({op, DType::f32});
    if (kBf16Ops.count(op)) passes.push_back({op, DType::bf16});
  }
  return passes;
}

const Tensor& input(const std::map<std::string, Tensor>& in, const std::string& name) {
  auto it = in.find(name);
  KOTOBA_CHECK(it != in.end(), "reference case lacks input '", name, "'");
  return it->second;
}
Tensor optional_input(const std::map<std::string, Tensor>& in, const std::string& name) {
  auto it = in.find(name);
  return it == in.end() ? Tensor() : it->second;
}

// Runs the op named by the case on its inputs.
Tensor run_op(const RefCase& c, const std::map<std::string, Tensor>& in, std::map<std::string, Tensor>& tables) {
  const auto& a = c.attrs;
  const std::string& op = c.op;
  auto x = [&] { return input(in, "x"); };
  if (op == "reshape") return reshape(x(), a.at("shape").get<Shape>());
  if (op == "transpose") return transpose(x(), a.at("dim0"), a.at("dim1"));
  if (op == "slice") return slice(x(), a.at("dim"), a.at("start"), a.at("end"));
  if (op == "contiguous") return contiguous(transpose(x(), a.at("dim0"), a.at("dim1")));
  if (op == "cast") return cast(x(), DType::bf16);
  if (op == "add") return add(input(in, "a"), input(in, "b"));
  if (op == "sub") return sub(input(in, "a"), input(in, "b"));
  if (op == "mul") return mul(input(in, "a"), input(in, "b"));
  if (op == "div") return div(input(in, "a"), input(in, "b"));
  if (op == "scale") return scale(x(), a.at("alpha").get<float>());
  if (op == "sum") return sum(x());
  if (op == "mean") return mean(x());
  if (op == "gelu") return gelu(x());
  if (op == "gelu_erf") return gelu_erf(x());
  if (op == "silu") return silu(x());
  if (op == "relu") return relu(x());
  if (op == "swiglu") return swiglu(input(in, "gate"), input(in, "up"));
  if (op == "matmul") return matmul(input(in, "a"), input(in, "b"));
  if (op == "linear") return linear(x(), input(in, "weight"), optional_input(in, "bias"));
  if (op == "embedding") return embedding(input(in, "ids"), input(in, "weight"));
  if (op == "layer_norm")
    return layer_norm(x(), input(in, "weight"), optional_input(in, "bias"), a.at("eps").get<float>());
  if (op == "rms_norm") return rms_norm(x(), input(in, "weight"), a.at("eps").get<float>());
  if (op == "softmax") return softmax(x());
  if (op == "scaled_dot_product_attention") {
    float s = a.contains("scale") ? a.at("scale").get<float>() : std::numeric_limits<float>::quiet_NaN();
    int64_t window = a.contains("window") ? a.at("window").get<int64_t>() : 0;
    return scaled_dot_product_attention(input(in, "q"), input(in, "k"), input(in, "v"), a.at("causal").get<bool>(),
                                        optional_input(in, "key_mask"), s, window, optional_input(in, "segment_ids"));
  }
  if (op == "attention_packed_qkv")
    return attention_packed_qkv(input(in, "qkv"), a.at("n_head").get<int64_t>(), a.at("causal").get<bool>(),
                                optional_input(in, "key_mask"), optional_input(in, "segment_ids"));
  if (op == "rope") {
    Tensor cos, sin;
    rope_tables(a.at("max_pos").get<int64_t>(), x().size(-1), a.at("theta").get<float>(), cos, sin);
    tables["cos"] = cos;
    tables["sin"] = sin;
    return rope(x(), input(in, "positions"), cos, sin);
  }
  if (op == "cross_entropy")
    return cross_entropy(input(in, "logits"), input(in, "targets"), a.at("ignore_index").get<int32_t>(),
                         a.at("overwrite_logits").get<bool>());
  throw Error("test_ops: no runner for op '" + op + "'");
}

// One case: load, run, backward, compare. Returns the failures; prints worst ratios.
std::vector<std::string> run_case(const RefCase& c) {
  std::vector<std::string> failures;
  SafeTensors ref = load_safetensors((ops_reference_dir() / c.file).string());
  auto get = [&](const std::string& name) -> const Tensor& {
    auto it = ref.tensors.find(name);
    KOTOBA_CHECK(it != ref.tensors.end(), c.file, ": reference tensor '", name, "' is missing");
    return it->second;
  };
  const Tolerance tol = tolerance_for(c.dtype);
  Tolerance grad_tol = tol;
  // A case may state an absolute floor for its gradients, with its reason (ops_reference.py).
  if (c.attrs.contains("grad_abs_floor")) grad_tol.abs_floor = c.attrs["grad_abs_floor"].at(std::string(dtype_name(c.dtype)));
  std::map<std::string, Tensor> inputs;
  for (const auto& name : c.inputs) {
    const Tensor& t = get("in." + name);
    Tensor v = (t.dtype() == DType::f64) ? t.to(c.dtype) : t.clone();
    if (std::find(c.grads.begin(), c.grads.end(), name) != c.grads.end()) v.set_requires_grad(true);
    inputs[name] = v;
  }
  std::map<std::string, Tensor> tables;
  Tensor out = run_op(c, inputs, tables);
  std::ostringstream report;
  report << "  " << c.name << " [" << dtype_name(c.dtype) << "]";
  auto check = [&](const std::string& what, const Tensor& got, const Tensor& expected, Tolerance t) {
    // Cancelling sums carry the analysed worst-case rounding error of their terms (ops_reference.py).
    auto bound = ref.tensors.find("bound." + what);
    Comparison cmp = compare_to_reference(got, expected, t, bound == ref.tensors.end() ? Tensor() : bound->second);
    report << " " << what << "=" << cmp.worst_ratio;
    if (!cmp.ok) failures.push_back(c.name + " [" + std::string(dtype_name(c.dtype)) + "] " + what + ": " + cmp.describe());
  };
  check("out", out, get("out"), tol);
  for (auto& [name, table] : tables) check("table." + name, table, get("table." + name), tolerance_for(DType::f32));

  // L = sum(out * W) in f32 (the harness's own cast / contiguous are tested ops too).
  Tensor out32 = out.dtype() == DType::f32 ? out : cast(out, DType::f32);
  Tensor weight = get("W").to(DType::f32);
  Tensor loss;
  if (out32.numel() == 1 && out32.ndim() == 0) {
    loss = scale(out32, weight.to_vector()[0]);
  } else {
    if (!out32.is_contiguous()) out32 = contiguous(out32);
    loss = sum(mul(out32, weight));
  }
  loss.backward();
  if (tape_size() != 0) failures.push_back(c.name + ": tape not empty after backward (" + std::to_string(tape_size()) + " nodes)");
  for (const auto& name : c.grads) {
    Tensor g = inputs[name].grad();
    if (g.defined() && g.dtype() != inputs[name].dtype())
      failures.push_back(c.name + " grad." + name + ": dtype " + std::string(dtype_name(g.dtype())) +
                         " differs from the input's " + std::string(dtype_name(inputs[name].dtype())));
    check("grad." + name, g, get("grad." + name), grad_tol);
  }
  std::printf("%s\n", report.str().c_str());
  return failures;
}

class OpsReference : public ::testing::TestWithParam<OpPass> {};

TEST_P(OpsReference, MatchesTorchFloat64) {
  const RefIndex& index = reference_index();
  if (!index.error.empty()) GTEST_FAIL() << index.error;
  const OpPass& pass = GetParam();
  std::printf("reference seed %llu (KOTOBA_TEST_SEED), cpu kernels %s; err/allowed per tensor (<= 1 passes):\n",
              (unsigned long long)index.seed, std::string(cpu_isa()).c_str());
  int n = 0;
  for (const auto& c : index.cases) {
    if (c.op != pass.op || c.dtype != pass.dtype) continue;
    ++n;
    try {
      for (const auto& f : run_case(c)) ADD_FAILURE() << f;
    } catch (const std::exception& e) {
      ADD_FAILURE() << c.name << " [" << dtype_name(c.dtype) << "] threw: " << e.what();
    }
    clear_tape();
  }
  EXPECT_GT(n, 0) << "no reference cases for op " << pass.op << " in " << dtype_name(pass.dtype)
                  << " (ops_reference.py and test_ops.cpp disagree)";
  if (HasFailure())
    std::printf("to replay these inputs: KOTOBA_TEST_SEED=%llu ctest ...\n", (unsigned long long)index.seed);
}

INSTANTIATE_TEST_SUITE_P(Reference, OpsReference, ::testing::ValuesIn(all_passes()),
                         [](const ::testing::TestParamInfo<OpPass>& info) {
                           return info.param.op + "_" + std::string(dtype_name(info.param.dtype));
                         });

TEST(ReferenceIndex, MatchesTheOpList) {
  const RefIndex& index = reference_index();
  if (!index.error.empty()) GTEST_FAIL() << index.error;
  std::set<std::string> expected, found;
  for (const auto& p : all_passes()) expected.insert(p.op + "/" + std::string(dtype_name(p.dtype)));
  for (const auto& c : index.cases) found.insert(c.op + "/" + std::string(dtype_name(c.dtype)));
  for (const auto& e : expected) EXPECT_TRUE(found.count(e)) << "no reference cases for " << e;
  for (const auto& f : found) EXPECT_TRUE(expected.count(f)) << "reference cases for " << f << " are never run";
}

}  // namespace
