"""The local runner's data streams: Beam's timed flush drops records, so local jobs flush by size only."""

import threading

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.runners.worker import data_plane
from apache_beam.testing.util import assert_that, equal_to

from beam_pipelines import options

RECORDS = 20_000
DATAFLOW_FLAGS = ["--runner=DataflowRunner", "--project=project", "--region=europe-west4",
                  "--temp_location=gs://bucket/tmp"]


def test_local_jobs_flush_their_data_streams_by_size_only(monkeypatch):
    monkeypatch.setattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", 1000)
    options.build_pipeline_options(DATAFLOW_FLAGS)
    assert worker_handlers.DATA_BUFFER_TIME_LIMIT_MS == 1000, "a Dataflow job leaves the local runner alone"

    options.build_pipeline_options(["--direct_num_workers=2", "--direct_running_mode=multi_threading"])
    stream = data_plane.ClosableOutputStream.create(None, None, worker_handlers.DATA_BUFFER_TIME_LIMIT_MS)
    assert not isinstance(stream, data_plane.TimeBasedBufferingClosableOutputStream)


def test_beams_timed_flush_drops_what_is_written_while_it_sends():
    """The race `options.flush_local_data_streams_by_size_only` avoids, with its interleaving forced.

    In Beam a timer thread flushes: it sends the buffer, then clears it. Here the send itself
    lets another thread write, as the job's writing thread may at that moment. Should a Beam
    release hold writers off during a flush, the late write is delivered, this test fails,
    and the workaround can go.
    """
    delivered, writers = [], []

    def send_while_another_thread_writes(data: bytes) -> None:
        delivered.append(data)
        writer = threading.Thread(target=stream.write, args=(b"|written during the flush",))
        writers.append(writer)
        writer.start()
        writer.join(timeout=2)

    stream = data_plane.TimeBasedBufferingClosableOutputStream(
        close_callback=delivered.append, flush_callback=send_while_another_thread_writes,
        time_flush_threshold_ms=3_600_000)
    stream.write(b"before the flush")
    stream.flush()
    writers[0].join(timeout=10)
    stream.close()
    assert b"".join(delivered) == b"before the flush", "Beam no longer drops it: remove the workaround"


def test_a_local_job_loses_no_record_where_beams_timed_flush_would(monkeypatch):
    """20,000 records of 10 KB through a shuffle on two worker threads, the timed flush set to every 5 ms.

    Without `flush_local_data_streams_by_size_only`, Beam drops a few hundred of them.
    """
    monkeypatch.setattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", 5)
    pipeline_options = options.build_pipeline_options(["--direct_num_workers=2",
                                                        "--direct_running_mode=multi_threading"])
    with beam.Pipeline(options=pipeline_options) as pipeline:
        delivered = (pipeline
                     | beam.Create(range(RECORDS))
                     | beam.Map(lambda index: (index % 16, bytes(10_000)))
                     | beam.GroupByKey()
                     | beam.Map(lambda key_and_records: len(key_and_records[1]))
                     | beam.CombineGlobally(sum))
        assert_that(delivered, equal_to([RECORDS]))
