import pytest

from leanformer import checkpoint, config, data, lesson


def test_quick_is_the_default_and_full_is_asked_for(monkeypatch):
    monkeypatch.delenv("LEANFORMER_MODE", raising=False)
    assert config.is_quick()
    monkeypatch.setenv("LEANFORMER_MODE", " Full ")
    assert not config.is_quick()


def test_an_unknown_mode_is_named_in_the_error(monkeypatch):
    monkeypatch.setenv("LEANFORMER_MODE", "fast")
    with pytest.raises(ValueError, match="LEANFORMER_MODE must be 'quick' or 'full', got 'fast'"):
        config.is_quick()


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LEANFORMER_CACHE", str(tmp_path))
    assert config.cache_dir() == tmp_path


def test_the_shipped_files_are_where_the_paths_say():
    assert config.SUBSET_PATH.is_file() and config.REFERENCE.is_file()
    assert config.REFERENCE.parent == config.CHECKPOINTS


def test_lessons_keep_their_names_for_mode_and_paths():
    # Lessons import these from the modules they use them with.
    assert lesson.is_quick is config.is_quick
    assert data.SUBSET_PATH == config.SUBSET_PATH and checkpoint.REFERENCE == config.REFERENCE
