"""A Twilio Media Streams bot as people write them for Twilio, with nothing callvisor-specific
but the optional `hangup` line: it learns the streamSid from `start`, echoes the caller's audio
with `media`, marks the end of each second of it, clears on `*` and hangs up on `#`.

Run behind callvisor: `python3 examples/twilio_echo_bot.py` (port 8765, or $PORT), then callvisor
with HANDLER=bridge BRIDGE_URL=ws://127.0.0.1:8765. Needs `pip install websockets`.
"""

import asyncio
import json
import os

import websockets


async def handle(ws):
    stream_sid = None
    frames = 0
    async for message in ws:
        data = json.loads(message)
        event = data["event"]
        if event == "start":
            stream_sid = data["start"]["streamSid"]
            print(f"call {data['start']['callSid']} from {data['start']['customParameters'].get('From')}")
        elif event == "media":
            frames += 1
            await ws.send(json.dumps({
                "event": "media", "streamSid": stream_sid,
                "media": {"payload": data["media"]["payload"]},
            }))
            if frames % 50 == 0:
                await ws.send(json.dumps({
                    "event": "mark", "streamSid": stream_sid, "mark": {"name": f"second-{frames // 50}"},
                }))
        elif event == "dtmf" and data["dtmf"]["digit"] == "*":
            await ws.send(json.dumps({"event": "clear", "streamSid": stream_sid}))
        elif event == "dtmf" and data["dtmf"]["digit"] == "#":
            await ws.send(json.dumps({"event": "hangup"}))  # callvisor hangs the call up (REST)
        elif event == "stop":
            break


async def main():
    async with websockets.serve(handle, "127.0.0.1", int(os.environ.get("PORT", "8765"))):
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
