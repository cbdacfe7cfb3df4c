"""A Twilio Media Streams bot as people write them for Twilio, with nothing callvisor-specific
but the optional `hangup` line: it learns the streamSid from `start`, echoes the caller's audio
with `media`, marks the end of each second of it, clears on `*` and hangs up on `#`.

Run behind callvisor: `python3 examples/twilio_echo_bot.py` (port 8765, or $PORT), then callvisor
with HANDLER=bridge BRIDGE_URL=ws://127.0.0.1:8765. Needs `pip install websockets`.

PLAYOUT_MS=20 makes it play its audio out at real time instead of echoing each frame at once:
one queued frame every 20 ms on its own clock, as bots with an output clock do (Pipecat's output
transport paces its audio so). Such a bot writes nothing in answer to a frame, so the TCP ACK of
each frame waits for its next tick or the delayed-ACK timer: with Nagle's algorithm on the
sending socket, the caller's next frame waits for that ACK (scripts/python_bot.py measures it).
"""

import asyncio
import collections
import json
import os

import websockets

PLAYOUT = float(os.environ.get("PLAYOUT_MS", "0")) / 1000


async def handle(ws):
    stream_sid = None
    frames = 0
    playout = collections.deque()

    async def send_media(payload):
        nonlocal frames
        frames += 1
        await ws.send(json.dumps({
            "event": "media", "streamSid": stream_sid, "media": {"payload": payload},
        }))
        if frames % 50 == 0:
            await ws.send(json.dumps({
                "event": "mark", "streamSid": stream_sid, "mark": {"name": f"second-{frames // 50}"},
            }))

    async def play():
        loop = asyncio.get_running_loop()
        tick = loop.time()
        while True:
            tick += PLAYOUT
            await asyncio.sleep(max(0.0, tick - loop.time()))
            if playout:
                await send_media(playout.popleft())

    player = None
    try:
        async for message in ws:
            data = json.loads(message)
            event = data["event"]
            if event == "start":
                stream_sid = data["start"]["streamSid"]
                print(f"call {data['start']['callSid']} from {data['start']['customParameters'].get('From')}")
                if PLAYOUT:
                    player = asyncio.create_task(play())
            elif event == "media":
                if player:
                    playout.append(data["media"]["payload"])
                else:
                    await send_media(data["media"]["payload"])
            elif event == "dtmf" and data["dtmf"]["digit"] == "*":
                playout.clear()
                await ws.send(json.dumps({"event": "clear", "streamSid": stream_sid}))
            elif event == "dtmf" and data["dtmf"]["digit"] == "#":
                await ws.send(json.dumps({"event": "hangup"}))  # callvisor hangs the call up (REST)
            elif event == "stop":
                break
    finally:
        if player:
            player.cancel()


async def main():
    async with websockets.serve(handle, "127.0.0.1", int(os.environ.get("PORT", "8765"))):
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
