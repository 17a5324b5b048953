/** Ports for servers the tests start. */
import { createServer, type AddressInfo } from 'node:net';

/**
 * A free loopback port, for a server that must be told one (redis,
 * postgres, nginx, memcached): the kernel's choice, given back at once.
 * Never a port counted from a base: other suites run on this machine at the
 * same time, and two of them then meet on one port.
 */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address() as AddressInfo; s.close(() => resolve(port)); });
  });
}
