"""How Docker SDK and requests failures become the runtime errors a slot acts on."""

import docker.errors
import pytest
import requests
import urllib3.exceptions

from vac.runtimes.base import ContainerGone, ContainerRuntimeError, ImageMissing, RuntimeUnavailable, StartFailed
from vac.runtimes.docker import is_read_timeout, translate_error, translated_errors


def api_error(status, explanation, cls=docker.errors.APIError):
    response = requests.Response()
    response.status_code = status
    return cls(f"{status} error", response=response, explanation=explanation)


def wait_timeout():
    """What requests raises when Docker's chunked wait response times out."""
    inner = urllib3.exceptions.ReadTimeoutError(None, "/containers/x/wait", "Read timed out.")
    try:
        try:
            raise TimeoutError("timed out")
        except TimeoutError:
            raise inner
    except urllib3.exceptions.ReadTimeoutError as error:
        wrapped = requests.exceptions.ConnectionError(error)
        wrapped.__context__ = error
        return wrapped


def test_wait_timeout_wrapped_in_connection_error_is_a_read_timeout():
    assert is_read_timeout(wait_timeout())
    assert is_read_timeout(requests.exceptions.ReadTimeout("Read timed out."))


def test_refused_connection_and_connect_timeout_are_not_read_timeouts():
    refused = requests.exceptions.ConnectionError(FileNotFoundError(2, "No such file or directory"))
    connect = requests.exceptions.ConnectTimeout(urllib3.exceptions.ConnectTimeoutError(None, "timed out"))
    connect.__context__ = TimeoutError("timed out")
    assert not is_read_timeout(refused)
    assert not is_read_timeout(connect)


@pytest.mark.parametrize("error, expected", [
    (api_error(404, "No such container: abc", docker.errors.NotFound), ContainerGone),
    (api_error(500, "driver failed"), RuntimeUnavailable),
    (api_error(400, "bad parameter"), ContainerRuntimeError),
    (requests.exceptions.ConnectionError("refused"), RuntimeUnavailable),
    (requests.exceptions.ReadTimeout("Read timed out. (read timeout=30)"), RuntimeUnavailable),
    (docker.errors.DockerException("Error while fetching server API version: refused"), RuntimeUnavailable),
])
def test_translate_error(error, expected):
    translated = translate_error(error, "do something")
    assert type(translated) is expected
    assert str(translated).startswith("do something: ")


def test_translated_errors_keeps_runtime_errors_and_other_exceptions_as_they_are():
    with pytest.raises(ImageMissing):
        with translated_errors("pull"):
            raise ImageMissing("no such image")
    with pytest.raises(KeyError):
        with translated_errors("read"):
            raise KeyError("State")
    with pytest.raises(RuntimeUnavailable) as caught:
        with translated_errors("list containers"):
            raise requests.exceptions.ConnectionError("Connection aborted.")
    assert isinstance(caught.value.__cause__, requests.exceptions.ConnectionError)


def test_image_missing_is_a_start_failure():
    # The slot ends the machine as "700 Failed to start" for both.
    assert issubclass(ImageMissing, StartFailed)
