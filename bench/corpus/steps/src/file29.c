/* Generated source 29 of the steps context. */
int f29(int x) { return x * 29 + 1; }
