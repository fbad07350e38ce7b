/* Generated source 34 of the steps context. */
int f34(int x) { return x * 34 + 1; }
