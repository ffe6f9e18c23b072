"""Student registry and the multi-scale feature contract: every student × its declared levels."""
import pytest
import torch

from distill.embedding import EmbeddingRecipe, fit_pca, reference_embedding
from distill.students import create_student, list_students, register_student
from runtime.contracts.featurespec import FeatureSpec, LevelSpec, sd15_feature_spec

SPEC = FeatureSpec(image_size=64, levels=(LevelSpec("s8", 8, 12), LevelSpec("s16", 16, 20),
                                          LevelSpec("s32", 32, 24), LevelSpec("s64", 64, 24)))


def test_registry_lists_the_required_students():
    assert {"tiny", "xs", "s", "m"} <= set(list_students())


def test_unknown_student_raises_with_the_known_names():
    with pytest.raises(KeyError, match="unknown student 'xl'.*tiny"):
        create_student("xl", spec=SPEC)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        @register_student("s")
        def another_s(spec, **kw):  # pragma: no cover - never built
            raise AssertionError


def test_the_builtin_index_is_what_the_families_register():
    import importlib

    from distill.students import registry

    for family in set(registry.BUILTIN.values()):
        importlib.import_module(family)
    assert {n: f for n, f in registry._FAMILY.items() if f in registry.BUILTIN.values()} == registry.BUILTIN


@pytest.mark.parametrize("name", list_students())
def test_outputs_follow_the_feature_spec(name):
    torch.manual_seed(0)
    m = create_student(name, spec=SPEC, embedding=EmbeddingRecipe(dim=8)).eval()
    assert m.output_names == ("embedding", "s8", "s16", "s32", "s64")
    assert [f["stride"] for f in m.feature_info] == [8, 16, 32, 64]
    with torch.no_grad():
        out = m(torch.randn(2, 3, 64, 64))
    assert out._fields == m.output_names  # typed result: field names are the ONNX output names
    for lv, info in zip(SPEC.levels, m.feature_info):
        g = SPEC.grid(lv)
        assert getattr(out, lv.name).shape == (2, lv.channels, g, g)
        assert info["out_chs"] == lv.channels
    feats = m.features(torch.randn(1, 3, 64, 64))
    for f, info in zip(feats, m.feature_info):
        assert f.shape[1] == info["num_chs"] and f.shape[-1] == 64 // info["stride"]
    assert out.embedding.shape == (2, 8, 8, 8)


@pytest.mark.parametrize("name", list_students())
def test_fused_copy_computes_the_same_function(name):
    torch.manual_seed(1)
    m = create_student(name, spec=SPEC, embedding=EmbeddingRecipe(dim=8))
    for mod in m.modules():  # non-trivial BN statistics, so folding is really exercised
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    m.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = m(x), m.fused()(x)
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.fused().modules())
    for k in m.output_names:
        torch.testing.assert_close(getattr(b, k), getattr(a, k), rtol=1e-4, atol=1e-5)


def test_embedding_is_the_teacher_bank_recipe_on_the_projections():
    """Student embedding = PCA(teacher.bank.patch_embedding(projections)), in train and fused form."""
    from teacher.bank import patch_embedding

    torch.manual_seed(2)
    m = create_student("tiny", spec=SPEC, embedding=EmbeddingRecipe(dim=16)).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        out = m(x)
        e = patch_embedding({n: getattr(out, n) for n in SPEC.names})
        torch.testing.assert_close(reference_embedding({n: getattr(out, n) for n in SPEC.names},
                                                       EmbeddingRecipe()), e)
        basis, mean, share = fit_pca(e, 16)
        m.set_embedding_basis(basis, mean)
        want = torch.einsum("dc,bchw->bdhw", basis, e - mean.view(1, -1, 1, 1))
        torch.testing.assert_close(m(x).embedding, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m.fused()(x).embedding, want, rtol=1e-4, atol=1e-5)
    assert 0.0 < share <= 1.0


@pytest.mark.parametrize("name,lo,hi", [("xs", 0.1e6, 0.3e6), ("s", 2e6, 5e6), ("m", 10e6, 20e6)])
def test_parameter_budgets_with_sd15_heads(name, lo, hi):
    m = create_student(name, spec=sd15_feature_spec(256), embedding=EmbeddingRecipe(dim=128))
    n = sum(p.numel() for p in m.parameters())
    assert lo <= n <= hi, f"{name}: {n / 1e6:.2f}M parameters"


def test_demo_student_is_an_order_of_magnitude_below_the_tiny_teacher():
    """"xs" (the demo's student) against the tiny teacher's feature spec: < 0.3M parameters, under a tenth
    of student "s" and of the tiny teacher it distils."""
    from teacher.checkpoint import build_random_teacher

    teacher = build_random_teacher("tiny")
    n = {name: sum(p.numel() for p in create_student(name, spec=teacher.feature_spec,
                                                      embedding=EmbeddingRecipe(dim=32)).parameters())
         for name in ("xs", "s")}
    n_teacher = sum(p.numel() for p in teacher.parameters())
    assert 0.05e6 <= n["xs"] <= 0.3e6, n
    assert 10 * n["xs"] <= min(n["s"], n_teacher), (n, n_teacher)


def test_only_int8_friendly_ops_in_the_backbone():
    m = create_student("s", spec=SPEC).fused()
    kinds = {type(mod).__name__ for mod in m.stem.modules()} | {type(mod).__name__ for mod in m.stages.modules()}
    assert kinds <= {"Sequential", "ConvBNReLU", "Conv2d", "Identity", "ReLU", "ModuleList"}


def test_reduced_basis_projection():
    m = create_student("tiny", spec=SPEC, ranks={"s8": 4})
    comps = torch.linalg.qr(torch.randn(12, 4))[0].T  # (4, 12) orthonormal rows
    mean = torch.randn(12)
    m.set_basis("s8", comps, mean)
    assert not m.proj["s8"].basis.weight.requires_grad
    with torch.no_grad():
        out = m.eval()(torch.randn(1, 3, 64, 64))
    centred = (out.s8 - mean.view(1, -1, 1, 1)).flatten(2)  # lies in the 4-dim span
    resid = centred - comps.T @ (comps @ centred)
    assert resid.abs().max() < 1e-4
    with pytest.raises(ValueError):
        m.set_basis("s16", comps, mean)


def test_pretrained_weights_learn_at_their_own_rate():
    from distill.trainer import fit_student

    m = create_student("lite0", spec=SPEC, embedding=EmbeddingRecipe(dim=8))
    assert len(m.pretrained_parameters()) > 0 and create_student("tiny", spec=SPEC).pretrained_parameters() == []
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, SPEC.image_size, SPEC.image_size), dtype=torch.uint8, generator=g)
    targets = {lv.name: torch.randn(4, lv.channels, SPEC.grid(lv), SPEC.grid(lv), generator=g) for lv in SPEC.levels}
    fit_student(m, images, targets, mean=(0.5,) * 3, std=(0.25,) * 3, steps=2, batch_size=2,
                pretrained_lr_scale=0.0, progress=False)
    net = {"net." + n for n, _ in m.net.named_parameters()}
    moved = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    assert moved and not moved & net  # scale 0: the ImageNet weights stay; the projections learn
