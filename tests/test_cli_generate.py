"""`fagan generate` against the original package: same latents, same pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from reference import (
    randomize_batch_norms,
    randomize_gammas,
    reference_configs_dir,
    reference_generator,
)

from fagan.cli import main


@pytest.mark.parametrize("variant", ["fagan_1", "fagan_2"])
@pytest.mark.parametrize("converged", [False, True])
def test_generate_matches_reference_generator(tmp_path, variant, converged) -> None:
    torch.manual_seed(11)
    conf = reference_configs_dir() / variant / "gen.conf"
    ref = reference_generator(conf)
    randomize_gammas(ref, seed=3)
    randomize_batch_norms(ref, seed=4)
    with torch.no_grad():  # spread the output over the whole tanh range
        ref.model[-1][0].weight.mul_(20)
    if converged:
        from reference import converge_spectral_norms

        converge_spectral_norms(ref)
    torch.save(ref.state_dict(), tmp_path / "GAN_GEN_10.pth")
    latents = torch.randn(6, 128)
    torch.save(latents, tmp_path / "latents.pth")
    ref.eval()
    with torch.no_grad():  # the original's next forward, as a user of it would run
        expected = ref(latents.view(6, 128, 1, 1))
    assert expected.abs().max() > 0.9  # the comparison covers the full range

    code = main(
        [
            "generate",
            "--generator_config",
            str(conf),
            "--generator_file",
            str(tmp_path / "GAN_GEN_10.pth"),
            "--latents",
            str(tmp_path / "latents.pth"),
            "--output_dir",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    files = sorted((tmp_path / "out").glob("*.png"))
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(6)]
    expected_u8 = ((expected.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).numpy()
    for index, file in enumerate(files):
        got = np.asarray(Image.open(file).convert("RGB"), dtype=np.float64)
        assert got.shape == (64, 64, 3)
        assert np.abs(got - expected_u8[index]).max() <= 2.0, file.name


def test_generate_rejects_latents_of_the_wrong_size(tmp_path, capsys) -> None:
    conf = reference_configs_dir() / "fagan_1" / "gen.conf"
    torch.save(reference_generator(conf).state_dict(), tmp_path / "g.pth")
    torch.save(torch.randn(3, 100), tmp_path / "latents.pth")
    code = main(
        [
            "generate",
            "--generator_config",
            str(conf),
            "--generator_file",
            str(tmp_path / "g.pth"),
            "--latents",
            str(tmp_path / "latents.pth"),
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "expected latents of shape N x 128, found [3, 100]" in err
