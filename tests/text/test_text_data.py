"""Text data: the vocabulary, the contiguous split, and window batches that cover the corpus exactly."""

import pytest
import torch

from tocha.data.text import UNKNOWN, TextBatches, Vocab, load_corpus
from tocha.errors import UserError

CPU = torch.device("cpu")


def test_vocab_round_trip_and_unknown_slot():
    text = "Hello, wörld!\n\tÇa va? 日本"
    vocab = Vocab.build(text)
    assert vocab.chars[0] == UNKNOWN and len(vocab) == len(set(text)) + 1
    assert vocab.decode(vocab.encode(text)) == text
    assert vocab.encode("Hxq").tolist()[1:] == [0, 0]  # unseen characters map to the unknown slot
    assert vocab.unknown_in("Hxqx") == ["x", "q"]


def test_corpus_split_is_contiguous_90_10_and_vocab_comes_from_train(tmp_path):
    text = "a" * 900 + "b" * 99 + "z"
    (tmp_path / "c.txt").write_text(text)
    corpus = load_corpus(str(tmp_path / "c.txt"), val_fraction=0.1, seq_len=8)
    assert corpus.train_text + corpus.val_text == text
    assert len(corpus.val_text) == 100 and corpus.train_text == "a" * 900
    assert corpus.vocab.chars == (UNKNOWN, "a")
    assert corpus.unknown_val_chars == 100  # 'b' and 'z' never occur in training


def test_folder_corpus_reads_every_file(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "one.txt").write_text("x" * 200)
    (tmp_path / "d" / "two.md").write_text("y" * 200)
    corpus = load_corpus(str(tmp_path / "d"), seq_len=8)
    assert corpus.files == 2 and len(corpus.train_text) + len(corpus.val_text) == 401


@pytest.mark.parametrize("shuffle", [True, False])
def test_windows_cover_the_corpus_once_with_next_char_targets(shuffle):
    ids = torch.arange(1000)
    batches = TextBatches(ids, 16, 7, device=CPU, shuffle=shuffle, seed=3)
    xs, ys = zip(*batches)
    x, y = torch.cat(xs), torch.cat(ys)
    assert len(xs) == len(batches) == -(-(999 // 16) // 7)
    assert torch.equal(y, x + 1)  # targets are the inputs shifted by one character
    covered = x.flatten().sort().values
    assert torch.equal(covered, torch.arange(999 // 16 * 16))  # every position once, none twice
    batches.set_epoch(1)
    again = torch.cat([b[0] for b in batches])
    assert torch.equal(again.sort(0).values, x.sort(0).values)
    assert torch.equal(again, x) != shuffle  # a new order per epoch only when shuffling


def test_streams_continue_row_by_row():
    ids = torch.arange(1001)
    batches = TextBatches(ids, 10, 4, device=CPU, shuffle=False, streams=True)
    got = list(batches)
    assert len(got) == len(batches) == 25  # 4 streams of 250 characters, 25 windows each
    for (x0, _), (x1, _) in zip(got, got[1:]):
        assert torch.equal(x1[:, 0], x0[:, -1] + 1)  # row b of the next batch continues row b
    x = torch.cat([b[0] for b in got])
    assert torch.equal(x.flatten().sort().values, torch.arange(1000))


def test_resume_mid_epoch_gives_the_remaining_batches():
    batches = TextBatches(torch.arange(500), 8, 4, device=CPU, shuffle=True, seed=1)
    batches.set_epoch(2)
    full = [x for x, _ in batches]
    batches.set_epoch(2, first_batch=5)
    rest = [x for x, _ in batches]
    assert all(torch.equal(a, b) for a, b in zip(full[5:], rest)) and len(rest) == len(full) - 5


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", ["empty"]),
        (b"   \n\n", ["empty"]),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ["binary", "NUL"]),
        (b"caf\xe9 latin-1 text " * 20, ["not UTF-8", "iconv"]),
    ],
)
def test_bad_text_files_are_user_errors(tmp_path, content, words):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        load_corpus(str(path))
    for word in words:
        assert word in str(err.value)


def test_seq_len_longer_than_the_text(tmp_path):
    (tmp_path / "short.txt").write_text("just a few words " * 10)
    with pytest.raises(UserError, match=r"seq_len=128 is longer than the validation text .*use seq_len=16"):
        load_corpus(str(tmp_path / "short.txt"), seq_len=128)


def test_default_corpus_is_the_english_fortune_files():
    from tocha.data.text import FORTUNES_DIR, default_corpus_files

    if not FORTUNES_DIR.is_dir():
        pytest.skip("the Debian package fortunes is not installed")
    files = default_corpus_files()
    assert files and all(f.parent == FORTUNES_DIR and f.suffix not in (".dat", ".u8") for f in files)
    assert not any(f.is_symlink() for f in files)


def test_fit_api_trains_the_text_task(tmp_path):
    import tocha

    (tmp_path / "t.txt").write_text("abcabcabd " * 60)
    result = tocha.fit(
        {"name": "gru", "hidden": [8], "layers": 1},
        task="charlm",
        data={"path": str(tmp_path / "t.txt")},
        seq_len=8,
        batch_size=8,
        epochs=1,
        threads=1,
        sample_chars=0,
        log={"progress": False},
    )
    assert result.run_dir is None and result.val["val.bpc"] > 0 and result.baseline.chars > 0
