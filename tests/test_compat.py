import pytest
from packaging.version import Version

from mechlens._compat import IncompatibleVersionError, check_versions


def versions(**v):
    return lambda name: Version(v[name.replace("-", "_")]) if name.replace("-", "_") in v else None


def test_transformers_524_with_tl_43_is_refused_with_the_fix():
    with pytest.raises(IncompatibleVersionError) as err:
        check_versions(versions(transformers="5.24.0", transformer_lens="4.3.0"))
    msg = str(err.value)
    assert "transformers 5.24.0" in msg and "transformer-lens 4.3.0" in msg
    assert "generate" in msg and "<5.24" in msg


@pytest.mark.parametrize(
    "tf, tl",
    [("5.23.0", "4.3.0"), ("5.9.0", "4.3.0"), ("5.24.0", "4.4.0"), ("5.25.1", "5.0.0")],
)
def test_good_combinations_pass(tf, tl):
    check_versions(versions(transformers=tf, transformer_lens=tl))


def test_newer_transformers_still_refused_with_old_tl():
    with pytest.raises(IncompatibleVersionError):
        check_versions(versions(transformers="5.30.2", transformer_lens="4.2.0"))


def test_installed_versions_are_compatible():
    # the environment under test (the lock, or --latest) must import cleanly
    check_versions()
