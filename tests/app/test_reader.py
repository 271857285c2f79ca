"""The reader: page selection arithmetic, opening PDFs and images (bad ones are messages), the
pane rendering thumbnails in the background, and a 30-page PDF read into the real tiny engine
with progress and Cancel."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from PySide6 import QtCore

from app.reader.chunking import (
    finished_status,
    fit_size,
    parse_page_ranges,
    reading_status,
    render_scale,
)
from app.reader.pdf import open_document
from engine.errors import InputError


def test_parse_page_ranges() -> None:
    assert parse_page_ranges("", 4) == [0, 1, 2, 3]
    assert parse_page_ranges("All", 2) == [0, 1]
    assert parse_page_ranges("1-3, 7, 9-", 10) == [0, 1, 2, 6, 8, 9]
    assert parse_page_ranges("5, 2-3, 3", 6) == [4, 1, 2]
    assert parse_page_ranges("-2", 6) == [0, 1]


@pytest.mark.parametrize(
    ("text", "message"),
    [("0", "outside 1-5"), ("4-9", "outside 1-5"), ("3-1", "outside"), ("x", "not a page")],
)
def test_parse_page_ranges_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_page_ranges(text, 5)


def test_render_scale_and_fit_size() -> None:
    # an A4 page (595 x 842 points) at a 1 MP budget
    scale = render_scale(595, 842, 1024 * 1024)
    assert 595 * 842 * scale**2 == pytest.approx(1024 * 1024)
    assert fit_size(1000, 500, 160) == (160, 80)
    assert fit_size(3, 3000, 160) == (1, 160)
    with pytest.raises(ValueError, match="no area"):
        render_scale(0, 10)


def test_status_lines() -> None:
    assert reading_status(0, 30) == "Reading page 1 of 30…"
    assert reading_status(4, 30, cancelling=True) == "Cancelling after page 4 of 30…"
    assert "12 of 30 pages are in memory" in finished_status(12, 30, cancelled=True)
    assert "Read 30 pages" in finished_status(30, 30, cancelled=False)


def write_pdf(path: Path, num_pages: int) -> Path:
    """A PDF whose page i shows "Page i" and i bars, written with PIL's PDF writer."""
    pages = []
    for i in range(1, num_pages + 1):
        page = Image.new("RGB", (300, 400), "white")
        draw = ImageDraw.Draw(page)
        draw.text((20, 20), f"Page {i}", fill="black")
        for b in range(i % 8):
            draw.rectangle((20 + 30 * b, 100, 40 + 30 * b, 300), fill=(40 * b, 0, 0))
        pages.append(page)
    pages[0].save(path, save_all=True, append_images=pages[1:], resolution=72)
    return path


def write_encrypted_pdf(path: Path) -> Path:
    """A PDF with a standard security handler whose empty user password does not open it."""
    body = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100 100] >>",
        b"<< /Filter /Standard /V 1 /R 2 /O <"
        + b"11" * 32
        + b"> /U <"
        + b"22" * 32
        + b"> /P -4 >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for n, obj in enumerate(body, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(body) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Encrypt 4 0 R " % (len(body) + 1)
    out += b"/ID [<" + b"ab" * 16 + b"> <" + b"ab" * 16 + b">] >>\nstartxref\n%d\n%%%%EOF\n" % xref
    path.write_bytes(bytes(out))
    return path


def test_open_pdf_renders_pages(tmp_path: Path) -> None:
    doc = open_document([write_pdf(tmp_path / "doc.pdf", 3)])
    assert (doc.label, doc.num_pages) == ("doc.pdf", 3)
    page = doc.render(2, max_pixels=300 * 400)
    assert page.dtype == np.uint8 and page.shape[2] == 3
    assert abs(page.shape[0] * page.shape[1] - 300 * 400) < 2000
    # page 3 has 3 bars: dark pixels in the bar band, white elsewhere
    assert page[200, 25:45].mean() < 100 and page[200, 250:280].min() > 200
    doc.close()


def test_open_images_as_pages(tmp_path: Path) -> None:
    paths = []
    for i, colour in enumerate(("red", "blue")):
        paths.append(tmp_path / f"p{i}.png")
        Image.new("RGB", (40, 30), colour).save(paths[-1])
    doc = open_document(paths)
    assert (doc.label, doc.num_pages) == ("p0.png and 1 more", 2)
    np.testing.assert_array_equal(doc.render(1)[0, 0], [0, 0, 255])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: write_encrypted_pdf(d / "locked.pdf"), "locked.pdf is password-protected"),
        (lambda d: _write(d / "bad.pdf", b"%PDF-1.4 not really"), "bad.pdf is damaged"),
        (lambda d: d / "missing.pdf", "does not exist"),
        (lambda d: _write(d / "notes.txt", b"hello"), "notes.txt: not a PDF or an image"),
    ],
    ids=["encrypted", "corrupt", "missing", "text-file"],
)
def test_open_document_bad_files_are_clear_messages(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(InputError, match=message):
        open_document([make(tmp_path)])


def test_open_document_rejects_a_pdf_among_images(tmp_path: Path) -> None:
    pdf = write_pdf(tmp_path / "a.pdf", 1)
    with pytest.raises(InputError, match="one PDF at a time"):
        open_document([pdf, pdf])


def test_corrupt_image_page_is_a_message(tmp_path: Path) -> None:
    doc = open_document([_write(tmp_path / "broken.png", b"\x89PNG not an image")])
    with pytest.raises(InputError, match="broken.png is not a readable image"):
        doc.render(0)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.gui
def test_pane_renders_thumbnails_in_the_background(qtbot, tmp_path: Path) -> None:
    from app.reader.pane import ReaderPane

    pane = ReaderPane()
    qtbot.addWidget(pane)
    pdf = write_pdf(tmp_path / "long.pdf", 30)
    # WHEN a 30-page PDF is opened THEN the call returns before the pages are rendered
    start = time.monotonic()
    with qtbot.waitSignal(pane.pages_rendered, timeout=20000) as blocker:
        assert pane.open_paths([pdf])
        assert time.monotonic() - start < 1.0
        assert pane.thumbnails.count() == 30
    assert blocker.args == [30]
    assert all(not pane.thumbnails.item(i).icon().isNull() for i in range(30))
    assert pane.page_view.pixmap() is not None and not pane.page_view.pixmap().isNull()
    assert pane.read_button.isEnabled() and not pane.cancel_button.isEnabled()
    # WHEN a thumbnail is chosen in a narrow pane THEN its page is shown as wide as the view
    pane.resize(420, 500)
    pane.show()
    qtbot.waitExposed(pane)
    pane.thumbnails.setCurrentRow(4)
    shown = pane.page_view.pixmap()
    assert 0 < shown.width() <= pane.page_scroll.viewport().width() < 860
    cache = pane.rendered.cache_dir
    assert len(list(cache.glob("page-*.png"))) == 30
    # WHEN the document is closed THEN its cache goes (once the render job has let go too)
    pane.close_document()
    qtbot.waitUntil(lambda: not cache.exists(), timeout=2000)


@pytest.mark.gui
def test_pane_bad_pdf_is_a_message_and_keeps_the_open_document(qtbot, tmp_path: Path) -> None:
    from app.reader.pane import ReaderPane

    pane = ReaderPane()
    qtbot.addWidget(pane)
    with qtbot.waitSignal(pane.pages_rendered, timeout=10000):
        pane.open_paths([write_pdf(tmp_path / "good.pdf", 2)])
    assert not pane.open_paths([write_encrypted_pdf(tmp_path / "locked.pdf")])
    assert "locked.pdf is password-protected" in pane.status.text()
    assert pane.rendered is not None and pane.rendered.document.label == "good.pdf"
    pane.pages_edit.setText("2-9")
    pane.read_button.click()
    assert "outside 1-2" in pane.status.text() and not pane.is_reading


@pytest.mark.gui
@pytest.mark.slow
def test_read_30_page_pdf_with_progress_then_cancel(make_window, tiny_factory, qtbot, tmp_path):
    from app.reader.pane import ReaderPane

    # GIVEN the app on the tiny real engine, with the reader pane build() installed, and a PDF
    window = make_window(tiny_factory)
    client = window.engine_client
    qtbot.waitUntil(lambda: client.model_info is not None, timeout=30000)
    pane = window.findChild(ReaderPane)
    with qtbot.waitSignal(pane.pages_rendered, timeout=20000):
        pane.open_paths([write_pdf(tmp_path / "thirty.pdf", 30)])

    # WHEN all pages are read THEN progress runs 0..30 in order, with the page being read shown
    progress: list[int] = []
    statuses: list[str] = []
    client.job_progress.connect(lambda _id, done, _total: progress.append(done))
    client.job_progress.connect(lambda *_: statuses.append(pane.status.text()))
    pane.read_button.click()
    assert pane.is_reading and pane.cancel_button.isEnabled()
    result = wait_for_job(qtbot, client)
    assert progress == list(range(31))
    assert statuses[1] == "Reading page 2 of 30…"
    assert not result.cancelled and result.status.tokens_seen > 0
    assert "Read 30 pages into memory" in pane.status.text() and not pane.is_reading
    tokens_after_read = result.status.tokens_seen

    # WHEN reading again and Cancel is clicked when page 3 is read THEN it stops there, keeping
    # the 3 pages. The engine thread waits at page 3 until the click has happened, so a busy
    # machine cannot let it run ahead (a direct connection runs on the engine thread).
    progress.clear()
    clicked = threading.Event()

    def hold_at_page_3(_id: int, done: int, _total: int) -> None:
        if done == 3:
            clicked.wait(30)

    def cancel_at_page_3(_id: int, done: int, _total: int) -> None:
        if done == 3:
            pane.cancel_button.click()
            clicked.set()

    client._worker.job_progress.connect(hold_at_page_3, QtCore.Qt.ConnectionType.DirectConnection)
    client.job_progress.connect(cancel_at_page_3)
    pane.read_button.click()
    result = wait_for_job(qtbot, client)
    assert result.cancelled and progress[-1] == 3
    assert "Cancelled: 3 of 30 pages are in memory" in pane.status.text()
    assert result.status.tokens_seen > tokens_after_read

    # THEN a question in the chat is answered from the state that holds the pages read,
    # continued in memory (not rebuilt from the history, which cannot replay a document)
    window.composer.set_text("What is on page 2?")
    with qtbot.waitSignal(client.generation_finished, timeout=60000) as blocker:
        window.composer.send_button.click()
    status = blocker.args[1].status
    assert status.how == "memory"
    assert status.tokens_seen > result.status.tokens_seen
    pane.close_document()


def wait_for_job(qtbot, client, timeout: int = 120000):  # noqa: ANN001, ANN201
    """The JobResult of the next job to end; a failed job fails the test with its message."""
    ended: list[tuple[str, object]] = []
    client.job_finished.connect(lambda _id, result: ended.append(("finished", result)))
    client.job_failed.connect(lambda _id, message: ended.append(("failed", message)))
    qtbot.waitUntil(lambda: bool(ended), timeout=timeout)
    kind, value = ended[0]
    if kind == "failed":
        pytest.fail(f"the engine job failed: {value}")
    return value


@pytest.mark.gui
def test_pane_opens_dropped_files(qtbot, tmp_path: Path) -> None:
    from PySide6 import QtGui

    from app.reader.pane import ReaderPane

    pane = ReaderPane()
    qtbot.addWidget(pane)
    image = tmp_path / "scan.png"
    Image.new("RGB", (60, 80), "white").save(image)
    mime = QtCore.QMimeData()
    mime.setUrls([QtCore.QUrl.fromLocalFile(str(image))])
    drop = QtGui.QDropEvent(
        QtCore.QPointF(10, 10),
        QtCore.Qt.DropAction.CopyAction,
        mime,
        QtCore.Qt.MouseButton.LeftButton,
        QtCore.Qt.KeyboardModifier.NoModifier,
    )
    with qtbot.waitSignal(pane.pages_rendered, timeout=5000) as blocker:
        pane.dropEvent(drop)
    assert blocker.args == [1] and pane.rendered.document.label == "scan.png"
    pane.close_document()


def test_oversized_image_page_is_a_message(tmp_path: Path, monkeypatch) -> None:
    # GIVEN an image whose pixel count is far over Pillow's decompression-bomb limit
    path = tmp_path / "huge.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    doc = open_document([path])
    with pytest.raises(InputError, match="huge.png is too large to read safely"):
        doc.render(0)


@pytest.mark.gui
def test_read_clicked_before_rendering_ends_starts_by_itself(qtbot, tmp_path: Path) -> None:
    from app.reader.pane import ReaderPane

    pane = ReaderPane()
    qtbot.addWidget(pane)
    pane.open_paths([write_pdf(tmp_path / "long.pdf", 30)])
    # GIVEN the first page rendered and the rest still rendering
    qtbot.waitUntil(pane.read_button.isEnabled, timeout=10000)
    if pane.rendered is not None and len(list(pane.rendered.cache_dir.glob("*.png"))) == 30:
        pytest.skip("this machine rendered all 30 pages before the click")
    # WHEN "Read into memory" is clicked THEN it waits, says so, and can be cancelled
    pane.read_button.click()
    assert "Reading starts once page 30 is rendered" in pane.status.text()
    assert not pane.read_button.isEnabled() and pane.cancel_button.isEnabled()
    # THEN the read starts by itself with all 30 pages once they are rendered
    with qtbot.waitSignal(pane.read_requested, timeout=20000) as blocker:
        pass
    paths, label = blocker.args
    assert label == "long.pdf" and len(paths) == 30 and all(p.exists() for p in paths)
    assert pane.is_reading
    pane.on_read_finished(False, 30)
    pane.close_document()


@pytest.mark.gui
def test_panes_without_a_model_say_so_and_send_nothing(make_window, qtbot, tmp_path):
    from app.reader.pane import ReaderPane
    from app.webcam.pane import WebcamPane
    from engine.errors import EngineError

    def no_model(path, device, quant="none"):
        raise EngineError("no embedded default model")

    # GIVEN the app with no model loaded, a document rendered in the reader
    window = make_window(no_model)
    qtbot.waitUntil(lambda: "No model" in window.transcript.placeholder.text(), timeout=20000)
    reader, webcam = window.findChild(ReaderPane), window.findChild(WebcamPane)
    with qtbot.waitSignal(reader.pages_rendered, timeout=20000):
        reader.open_paths([write_pdf(tmp_path / "two.pdf", 2)])
    requests: list[object] = []
    window.engine_client.job_finished.connect(lambda *a: requests.append(a))
    # WHEN the user reads it, and asks the webcam pane a question
    reader.read_button.click()
    webcam.question_asked.emit("what is this?", None)
    # THEN both panes say no model is loaded, and no request went to the engine
    assert "no model is loaded yet" in reader.status.text() and not reader.is_reading
    assert "no model is loaded yet" in webcam.answer.toPlainText()
    qtbot.wait(100)
    assert requests == [] and window.store.messages(window.current_conversation_id) == []
