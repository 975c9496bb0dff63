"""``tracker check``: what a configuration selects, or why it is refused."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from tracker.cli import main


def check(tmp_path: Path, text: str) -> tuple[int, str]:
    config = tmp_path / "tracker.toml"
    config.write_text(text)
    result = CliRunner().invoke(main, ["check", "--config", str(config)])
    return result.exit_code, result.output


class TestCheck:
    def test_the_aws_face_names_the_client_id(self, tmp_path: Path) -> None:
        code, output = check(tmp_path, "")
        assert code == 0
        assert "ok (cloud local, aws, client id 352656100000010, " in output
        assert "10 retries over 15 backoff steps" in output

    def test_the_lwm2m_face_names_the_endpoint(self, tmp_path: Path) -> None:
        code, output = check(tmp_path, '[cloud.local]\ncloud = "lwm2m"\n')
        assert code == 0
        assert "(cloud local, lwm2m, endpoint urn:imei:352656100000010, " in output

    def test_a_bad_value_is_named_with_exit_code_2(self, tmp_path: Path) -> None:
        code, output = check(tmp_path, '[cloud.local]\ncloud = "gcp"\n')
        assert code == 2
        assert 'cloud.local.cloud = "gcp": must be one of "aws", "lwm2m"' in output
